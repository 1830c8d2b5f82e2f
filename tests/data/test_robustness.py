"""Prepare under hostile conditions: huge "words", files that shrink, kill -9 and stopped runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.data import documents, staging
from lmfast.data.documents import DocumentsError, iter_pieces
from tests.data.conftest import KERNEL_BACKENDS, reference_documents

REPO = Path(__file__).resolve().parents[2]
DELIMITER = "[END_OF_DOCUMENT]"


def _joined_documents(path: Path, window: int, backend: str) -> tuple[list[str], int]:
    documents_, current, forced = [], b"", 0
    for batch in iter_pieces(path, DELIMITER, window_bytes=window, backend=backend):
        forced += batch.forced_cuts
        data = batch.flat.tobytes()
        for i in range(len(batch.first)):
            if batch.first[i]:
                current = b""
            current += data[int(batch.offsets[i]) : int(batch.offsets[i + 1])]
            if batch.last[i]:
                documents_.append(current.decode("utf-8"))
    return documents_, forced


LINE = st.lists(
    st.sampled_from(
        ["a", "word", " ", "  ", "\t", "é", "中", "😀", "[END", "_OF_DOCUMENT]", DELIMITER, "\r", "x y"]
    ),
    max_size=12,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(
    documents_=st.lists(st.lists(LINE, max_size=6), min_size=1, max_size=6),
    delimiter_padding=st.sampled_from(["", " ", "  \t"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    window=st.integers(16, 48),  # twice the window holds the longest delimiter line
    backend=st.sampled_from(KERNEL_BACKENDS),
)
def test_byte_bound_cuts_keep_every_document_exact(
    tmp_path_factory, documents_, delimiter_padding, newline, window, backend
):
    """Windows that never grow past 2x and hold no safe cut: the reader cuts at byte bounds (never
    inside a character, a CRLF or a delimiter line) and the documents' bytes stay exact."""
    lines = []
    for body in documents_:
        lines += ["doc", *body, f"{delimiter_padding}{DELIMITER}{delimiter_padding}"]
    path = tmp_path_factory.mktemp("cuts") / "docs.txt"
    path.write_bytes(newline.join(lines).encode("utf-8"))
    with mock.patch.object(documents, "MIN_GROWN_WINDOW_BYTES", 1):
        got, _ = _joined_documents(path, window, backend)
    assert got == reference_documents(path, DELIMITER)


def test_a_long_line_is_cut_at_byte_bounds(tmp_path):
    path = tmp_path / "docs.txt"
    word = "é" * 5000 + "abc" * 3000
    path.write_text(f"{word}\n{DELIMITER}\nshort\n", encoding="utf-8")
    with mock.patch.object(documents, "MIN_GROWN_WINDOW_BYTES", 1):
        got, forced = _joined_documents(path, 1024, "python")
    assert got == [word, "short"] and forced > 5


def test_a_file_that_shrinks_while_read_is_a_clear_error(tmp_path):
    """Never SIGBUS: windows are read, not mapped, and a short read names the file."""
    path = tmp_path / "docs.txt"
    path.write_text(("some words here\n" * 1000 + f"{DELIMITER}\n") * 10, encoding="utf-8")
    batches = iter_pieces(path, DELIMITER, window_bytes=4096)
    next(batches)
    os.truncate(path, 20_000)
    with pytest.raises(DocumentsError, match="shrank while being read"):
        list(batches)


def _prepare_command(train: Path, root: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "lmfast.prepare", "--documents_train_file", str(train),
        "--documents_valid_file", str(train), "--end_of_document", DELIMITER,
        "--tokenizer_cls_name", "GPT2Tokenizer", "--max_sample_length", "128", "--min_sample_length", "1",
        "--datasets_root", str(root), "--dataset_name", "d", "--quiet", *flags,
    ]  # fmt: skip


def _peak_rss_mb(command: list[str]) -> float:
    """Run `command`'s prepare in a child and return that child's peak RSS (MiB)."""
    code = (
        "import resource, sys; from lmfast.data.cli import main; rc = main(sys.argv[1:]);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYON_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-c", code, *command[3:]], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_huge_word_stays_within_the_window_bound(tmp_path):
    """An 8 MB "word" with no whitespace through 0.25 MiB windows: memory grows by well under what
    holding and encoding the word whole takes (the old reader doubled its window up to 2 GB), and
    every engine gives the same ids, since they all get the same pieces."""
    rng = np.random.default_rng(0)
    word = (rng.integers(0, 10, 8 << 20, dtype=np.uint8) + ord("a")).tobytes()
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_bytes(b"intro\n" + DELIMITER.encode() + b"\n" + word + b"\n" + DELIMITER.encode() + b"\nend\n")
    small.write_bytes(b"intro\n" + DELIMITER.encode() + b"\nend\n")
    baseline = _peak_rss_mb(_prepare_command(small, tmp_path / "small", "--window_mb", "0.25"))
    corpora = []
    for engine in ("gigatoken", "tokenizers"):
        root = tmp_path / engine
        peak = _peak_rss_mb(_prepare_command(big, root, "--window_mb", "0.25", "--tokenizer_engine", engine))
        assert peak - baseline < 150, (engine, peak, baseline)
        description = json.loads((root / "d" / "0" / "description.json").read_text())
        assert description["number_of_train_forced_cuts"] >= 7
        corpora.append((root / "d" / "0" / "train" / "corpus.npy").read_bytes())
    assert corpora[0] == corpora[1]


def _slow_input(tmp_path: Path) -> Path:
    """Enough real prose that a prepare runs for a few seconds through small windows."""
    text = (REPO / "data" / "documents" / "nietzsche" / "train.txt").read_bytes()
    path = tmp_path / "train.txt"
    path.write_bytes(text * 8)
    return path


def _wait_for_staging(dataset_dir: Path, process: subprocess.Popen, timeout: float = 120) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = (
            [p for p in dataset_dir.glob(f"{staging.PREFIX}*") if p.is_dir()] if dataset_dir.is_dir() else []
        )
        if found:
            return found
        assert process.poll() is None, "prepare finished before it could be signalled"
        time.sleep(0.01)
    raise AssertionError("no staging directory appeared")


@pytest.mark.slow
def test_kill_9_leaves_a_directory_the_next_run_removes(tmp_path):
    train = _slow_input(tmp_path)
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYON_NUM_THREADS": "1"}
    command = _prepare_command(train, root, "--window_mb", "0.01", "--tokenizer_engine", "tokenizers")
    victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    left = _wait_for_staging(root / "d", victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL and all(p.exists() for p in left)
    rerun = subprocess.run(
        _prepare_command(train, root), env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in (root / "d").iterdir()) == ["0", "latest"]


@pytest.mark.slow
def test_a_live_run_keeps_its_directory(tmp_path):
    """A stopped (SIGSTOP) run is alive: another run leaves its directory alone, and it finishes."""
    train = _slow_input(tmp_path)
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYON_NUM_THREADS": "1"}
    command = _prepare_command(train, root, "--window_mb", "0.01", "--tokenizer_engine", "tokenizers")
    stopped = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        left = _wait_for_staging(root / "d", stopped)
        stopped.send_signal(signal.SIGSTOP)
        other = subprocess.run(
            _prepare_command(train, root), env=env, capture_output=True, text=True, timeout=600
        )
        assert other.returncode == 0, other.stderr
        assert all(p.exists() for p in left)
    finally:
        stopped.send_signal(signal.SIGCONT)
    out, err = stopped.communicate(timeout=600)
    assert stopped.returncode == 0, err
    assert sorted(p.name for p in (root / "d").iterdir()) == ["0", "1", "latest"]


def test_a_directory_without_a_lock_is_stale(tmp_path):
    """Lock files are created before their directory, so a lockless one (an older lmfast) is stale."""
    (tmp_path / ".incomplete-old").mkdir()
    live = staging.Staging(tmp_path)
    removed = staging.remove_stale(tmp_path)
    assert removed == [tmp_path / ".incomplete-old"] and live.directory.is_dir()
    live.discard()
    assert list(tmp_path.iterdir()) == []


def _limit_file_size() -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A write that fails mid-run (a file-size limit, as a full disk would): exit 2, one line."""
    train = REPO / "data" / "documents" / "nietzsche" / "train.txt"
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        _prepare_command(train, root), env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_limit_file_size,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    # (train.txt is the valid file too: that warning comes first)
    errors = [line for line in result.stderr.strip().splitlines() if not line.startswith("WARNING ")]
    assert len(errors) == 1 and "--datasets_root: cannot write" in errors[0], result.stderr
    assert not root.exists()
