"""prepare(): the Nietzsche example end to end, the docs/architecture.md §1 semantics, both dtypes, every engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmfast.data import engines
from lmfast.data.prepare import PrepareConfig, PrepareError, prepare, write_split
from lmfast.models.dataset import PreparedDataset
from tests.data.conftest import KERNEL_BACKENDS, needs_native

REPO = Path(__file__).resolve().parents[2]
DELIMITER = "[END_OF_DOCUMENT]"
SEED_KEYS = (
    "documents_train_file",
    "documents_valid_file",
    "end_of_document",
    "tokenizer_cls_name",
    "max_sample_length",
    "min_sample_length",
    "datasets_root",
    "dataset_name",
    "number_of_train_samples",
    "number_of_train_tokens",
    "number_of_valid_samples",
    "number_of_valid_tokens",
)


def _config(train: Path, valid: Path, root: Path, **overrides) -> PrepareConfig:
    values = dict(
        documents_train_file=train,
        documents_valid_file=valid,
        end_of_document=DELIMITER,
        tokenizer_cls_name="GPT2Tokenizer",
        max_sample_length=16,
        min_sample_length=1,
        datasets_root=root,
        dataset_name="t",
    )
    values.update(overrides)
    return PrepareConfig(**values)


def _split_arrays(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    corpus = np.load(directory / split / "corpus.npy", mmap_mode="r")
    starts = np.load(directory / split / "sample_start_positions.npy", mmap_mode="r")
    return np.asarray(corpus), np.asarray(starts)


def test_seed_example_end_to_end(tmp_path, nietzsche_dir, gpt2, reference):
    """The README command, verbatim but for the datasets root; a second run writes 1/."""
    command = [
        sys.executable, "-m", "lmfast.prepare",
        "--documents_train_file", str(nietzsche_dir / "train.txt"),
        "--documents_valid_file", str(nietzsche_dir / "valid.txt"),
        "--end_of_document", DELIMITER,
        "--tokenizer_cls_name", "GPT2Tokenizer",
        "--max_sample_length", "128", "--min_sample_length", "8",
        "--datasets_root", str(tmp_path / "datasets"), "--dataset_name", "nietzsche",
    ]  # fmt: skip
    for version in ("0", "1"):
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(tmp_path / "datasets" / "nietzsche" / version)
    directory = tmp_path / "datasets" / "nietzsche" / "0"
    assert sorted(p.name for p in directory.iterdir()) == ["description.json", "tokenizer", "train", "valid"]
    description = json.loads((directory / "description.json").read_text())
    for key in SEED_KEYS:
        assert key in description
    assert description["max_sample_length"] == 128 and description["end_of_document"] == DELIMITER
    assert description["token_dtype"] == "uint16" and description["vocab_size"] == 50257
    assert description["bos_token_id"] == description["eos_token_id"] == 50256
    for split in ("train", "valid"):
        corpus, starts = _split_arrays(directory, split)
        assert corpus.dtype == np.uint16 and starts.dtype == np.int64
        assert description[f"number_of_{split}_samples"] == len(starts)
        assert description[f"number_of_{split}_tokens"] == len(corpus)
        expected_corpus, expected_starts = reference(gpt2, nietzsche_dir / f"{split}.txt", DELIMITER, 128, 8)
        np.testing.assert_array_equal(corpus, expected_corpus)
        np.testing.assert_array_equal(starts, expected_starts)
        lengths = np.diff(starts, append=len(corpus))
        assert lengths.min() >= 8 and lengths.max() <= 128
    # both runs are the same dataset
    for split in ("train", "valid"):
        for name in ("corpus.npy", "sample_start_positions.npy"):
            one = (directory / split / name).read_bytes()
            assert one == (directory.parent / "1" / split / name).read_bytes()


def test_tokenizer_dir_is_self_contained(tmp_path, nietzsche_dir):
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    directory = prepare(_config(nietzsche_dir / "train.txt", nietzsche_dir / "valid.txt", tmp_path))
    hf = PreTrainedTokenizerFast.from_pretrained(directory / "tokenizer")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (50256, 50256, 50256)
    assert hf("Hello world").input_ids == [15496, 995]
    raw = HFTokenizer.from_file(str(directory / "tokenizer" / "tokenizer.json"))
    assert raw.encode("Hello world").ids == [15496, 995]


def test_samples_decode_to_documents(tmp_path, nietzsche_dir, gpt2, documents_of):
    """With min length 1 nothing is dropped: each document's samples decode to BOS + text + EOS."""
    directory = prepare(_config(nietzsche_dir / "valid.txt", nietzsche_dir / "valid.txt", tmp_path))
    dataset = PreparedDataset(directory)
    texts = documents_of(nietzsche_dir / "valid.txt", DELIMITER)
    corpus = np.asarray(dataset.valid.corpus)
    # GPT-2's BOS and EOS are the same id, so documents are the runs between consecutive pairs
    ends = np.flatnonzero(corpus == 50256)
    assert len(ends) == 2 * len(texts)
    for i, text in enumerate(texts):
        start, end = ends[2 * i], ends[2 * i + 1]
        assert gpt2.decode(corpus[start + 1 : end].tolist()) == text
    starts = np.asarray(dataset.valid.starts)
    lengths = dataset.valid.lengths()
    assert lengths.max() <= 16 and lengths.min() >= 1
    # no sample crosses a document: a sample may hold a BOS only at its first position
    for i in range(len(dataset.valid)):
        sample = dataset.valid[i]
        inner_bos = np.flatnonzero(sample[1:] == 50256) + 1
        assert all(sample[j - 1] == 50256 or j == len(sample) - 1 for j in inner_bos), i
    assert starts[0] == 0


@pytest.mark.parametrize("engine", ["gigatoken", "tiktoken", "tokenizers"])
@pytest.mark.parametrize("kernels", [pytest.param("cython", marks=needs_native), "python"])
def test_every_engine_and_backend_writes_identical_bytes(tmp_path, nietzsche_dir, engine, kernels):
    valid = nietzsche_dir / "valid.txt"
    baseline = prepare(
        _config(valid, valid, tmp_path / "a", tokenizer_engine="tokenizers", kernel_backend="python")
    )
    other = prepare(_config(valid, valid, tmp_path / "b", tokenizer_engine=engine, kernel_backend=kernels))
    assert json.loads((other / "description.json").read_text())["tokenizer_engine_used"] == engine
    for name in ("corpus.npy", "sample_start_positions.npy"):
        assert (baseline / "valid" / name).read_bytes() == (other / "valid" / name).read_bytes()


def _big_vocab_gpt2(directory: Path) -> Path:
    """GPT-2 plus unreachable filler tokens up to id 70,000: same ids, but int32 corpus."""
    vocab = json.loads((REPO / "lmfast" / "assets" / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), 70_000)})
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_bytes((REPO / "lmfast" / "assets" / "gpt2" / "merges.txt").read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory


def test_int32_when_the_vocabulary_exceeds_uint16(tmp_path, nietzsche_dir, gpt2):
    tokenizer_dir = _big_vocab_gpt2(tmp_path / "big_vocab")
    valid = nietzsche_dir / "valid.txt"
    small = prepare(_config(valid, valid, tmp_path / "a", min_sample_length=3))
    big = prepare(
        _config(valid, valid, tmp_path / "b", tokenizer_cls_name=str(tokenizer_dir), min_sample_length=3)
    )
    description = json.loads((big / "description.json").read_text())
    assert description["token_dtype"] == "int32" and description["vocab_size"] == 70_000
    assert description["bos_token_id"] is None and description["eos_token_id"] == 50256
    corpus, _ = _split_arrays(big, "valid")
    assert corpus.dtype == np.int32
    # same text ids, only the BOS is gone: drop GPT-2's leading BOS of each document and compare
    small_corpus, _ = _split_arrays(small, "valid")
    assert len(corpus) < len(small_corpus)
    assert set(np.unique(corpus)) <= set(np.unique(small_corpus).tolist())


ODD_LINES = st.sampled_from(
    [
        "plain words here",
        "  indented line",
        "trailing spaces   ",
        "",
        " ",
        "<|endoftext|> is text",
        "naïve café 中文 😀👍🏽",
        "tab\tseparated\tvalues",
        "nbsp\u00a0and\u2028line sep",
        "x",
        "'s 't contractions'll",
        "12345 67.89",
        f"  {DELIMITER}  ",
        DELIMITER,
        f"{DELIMITER}x",
    ]
)


@pytest.fixture(scope="session")
def gigatoken_engine(gpt2):
    return engines.select_engine(gpt2, "gigatoken")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(ODD_LINES, min_size=1, max_size=60),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
    max_len=st.integers(1, 12),
    min_len=st.integers(1, 12),
    window=st.sampled_from([64, 97, 256, 1 << 20]),
    kernels=st.sampled_from(KERNEL_BACKENDS),
)
# regression: the delimiter line straddles the 64-byte window (bytes 51..69), right after a safe
# cut point at 51; the reader cut there and the document kept its last "\n" (GPT-2 id 198)
@example(
    lines=["plain words here"] * 3 + [DELIMITER, "x"],
    crlf=False,
    trailing_newline=False,
    max_len=12,
    min_len=1,
    window=64,
    kernels="python",
)
def test_against_reference_on_random_files(
    tmp_path_factory,
    gpt2,
    gigatoken_engine,
    reference,
    lines,
    crlf,
    trailing_newline,
    max_len,
    min_len,
    window,
    kernels,
):
    """Random documents (odd characters, CRLF, delimiters with spaces), tiny windows to force streaming."""
    min_len = min(min_len, max_len)
    lines = [DELIMITER, *lines] if DELIMITER not in [line.strip() for line in lines] else lines
    newline = "\r\n" if crlf else "\n"
    text = newline.join(lines) + (newline if trailing_newline else "")
    directory = tmp_path_factory.mktemp("random")
    path = directory / "docs.txt"
    path.write_bytes(text.encode("utf-8"))
    expected_corpus, expected_starts = reference(gpt2, path, DELIMITER, max_len, min_len)
    config = _config(path, path, directory, max_sample_length=max_len, min_sample_length=min_len)
    config.window_mb, config.kernel_backend = window / (1 << 20), kernels
    write = partial(
        write_split, path, "--documents_train_file", directory / "train", gigatoken_engine, gpt2, config
    )
    if len(expected_starts) == 0:
        with pytest.raises(PrepareError, match="gave no samples"):
            write(np.dtype(np.uint16), True)
        return
    stats = write(np.dtype(np.uint16), True)
    corpus, starts = _split_arrays(directory, "train")
    np.testing.assert_array_equal(corpus, expected_corpus)
    np.testing.assert_array_equal(starts, expected_starts)
    assert (stats.samples, stats.tokens) == (len(starts), len(corpus))


def test_failed_run_leaves_nothing(tmp_path):
    """Bad content found mid-run (here: no samples at all) removes the temporary directory too."""
    path = tmp_path / "docs.txt"
    path.write_text(f"a\n{DELIMITER}\nb\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="gave no samples"):
        prepare(_config(path, path, tmp_path / "root", min_sample_length=16))
    assert not (tmp_path / "root").exists()


def test_interrupted_run_leaves_nothing(tmp_path, nietzsche_dir, monkeypatch):
    """Ctrl-C in the middle of the second split: no dataset, no temporary directory, no new dirs."""
    from lmfast.data import prepare as prepare_module

    real = prepare_module.write_documents
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_documents", interrupted)
    valid = nietzsche_dir / "valid.txt"
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(valid, valid, tmp_path / "root"))
    assert not (tmp_path / "root").exists()
    (tmp_path / "root" / "t" / "0").mkdir(parents=True)  # an existing dataset is left alone
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        prepare(_config(valid, valid, tmp_path / "root"))
    assert [p.name for p in (tmp_path / "root" / "t").iterdir()] == ["0"]


def test_long_document_is_streamed_in_pieces(tmp_path, gutenberg_path, gpt2, reference):
    """A single 6.5 MB document through 64 KiB windows: cut at safe points, ids unchanged."""
    path = tmp_path / "one_document.txt"
    data = gutenberg_path.read_bytes()[: 1 << 20]
    path.write_bytes(data[: data.rindex(b"\n") + 1] + DELIMITER.encode() + b"\n")
    config = _config(path, path, tmp_path / "out", max_sample_length=1000, min_sample_length=1)
    config.window_mb = 1 / 16
    result = prepare(config)
    corpus, starts = _split_arrays(result, "train")
    expected_corpus, expected_starts = reference(gpt2, path, DELIMITER, 1000, 1)
    np.testing.assert_array_equal(corpus, expected_corpus)
    np.testing.assert_array_equal(starts, expected_starts)


def test_prepare_path_never_imports_torch(tmp_path, nietzsche_dir):
    code = (
        "import sys; from lmfast.data.cli import main;"
        f"rc = main(['--documents_train_file', {str(nietzsche_dir / 'valid.txt')!r},"
        f" '--documents_valid_file', {str(nietzsche_dir / 'valid.txt')!r}, '--end_of_document', {DELIMITER!r},"
        f" '--tokenizer_cls_name', 'GPT2Tokenizer', '--max_sample_length', '64', '--quiet',"
        f" '--datasets_root', {str(tmp_path)!r}]);"
        "heavy = [m for m in ('torch', 'transformers', 'lightning', 'datasets') if m in sys.modules];"
        "assert rc == 0 and not heavy, (rc, heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"max_sample_length": 0}, "max_sample_length", "must be positive"),
        ({"min_sample_length": 20}, "min_sample_length", "must not exceed"),
        ({"tokenizer_engine": "fast"}, "tokenizer_engine", "must be one of"),
        ({"window_mb": float("nan")}, "window_mb", "positive number"),
        ({"document_eos_token": ""}, "document_eos_token", "empty string"),
    ],
)
def test_options_are_checked_once_with_field_and_rule(tmp_path, overrides, field, rule):
    with pytest.raises(PrepareError) as caught:
        _config(tmp_path / "a", tmp_path / "b", tmp_path, **overrides)
    assert caught.value.field == field and rule in caught.value.rule
    assert str(caught.value).startswith(f"--{field}")


def test_num_threads_bounds_the_engine_pool_from_python(tmp_path, nietzsche_dir):
    """No environment variable set by a CLI: `prepare(PrepareConfig(num_threads=N))` sizes the
    Rust engine's pool itself (threads counted in /proc after the run, in fresh interpreters)."""
    counts = {}
    for n in (1, 3):
        code = (
            "import os; from pathlib import Path; from lmfast.data.prepare import PrepareConfig, prepare;"
            f"p = Path({str(nietzsche_dir / 'valid.txt')!r});"
            "prepare(PrepareConfig(documents_train_file=p, documents_valid_file=p,"
            " end_of_document='[END_OF_DOCUMENT]', tokenizer_cls_name='GPT2Tokenizer',"
            f" max_sample_length=64, datasets_root={str(tmp_path)!r}, num_threads={n},"
            " tokenizer_engine='gigatoken'));"
            "print(len(os.listdir('/proc/self/task')))"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr
        counts[n] = int(result.stdout.split()[-1])
    assert counts[3] - counts[1] == 2, counts
