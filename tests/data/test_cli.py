"""Bad input: exit code 2, one line on stderr naming the flag or file and the problem, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lmfast.data.cli import main

DELIMITER = "[END_OF_DOCUMENT]"
GOOD = f"first document\n{DELIMITER}\nsecond document, a little longer than the first\n{DELIMITER}\n"


@pytest.fixture
def good_file(tmp_path) -> Path:
    path = tmp_path / "good.txt"
    path.write_text(GOOD, encoding="utf-8")
    return path


def _args(train: Path, valid: Path, root: Path, **overrides: str) -> list[str]:
    flags = {
        "documents_train_file": str(train),
        "documents_valid_file": str(valid),
        "end_of_document": DELIMITER,
        "tokenizer_cls_name": "GPT2Tokenizer",
        "max_sample_length": "16",
        "min_sample_length": "2",
        "datasets_root": str(root),
        "dataset_name": "t",
    }
    flags.update(overrides)
    argv = ["--quiet"]
    for key, value in flags.items():
        if value is not None:
            argv += [f"--{key}", value]
    return argv


def _fails(capsys, argv: list[str], root: Path, *needles: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert captured.out == ""
    assert not root.exists(), f"{root} was written"
    return lines[0]


def test_good_input_works(tmp_path, good_file, capsys):
    assert main(_args(good_file, good_file, tmp_path / "root")) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "root" / "t" / "0")


def test_missing_file(tmp_path, good_file, capsys):
    missing = tmp_path / "nope.txt"
    _fails(
        capsys,
        _args(good_file, missing, tmp_path / "root"),
        tmp_path / "root",
        "--documents_valid_file",
        "not found",
        str(missing),
    )


def test_directory_without_documents(tmp_path, good_file, capsys):
    """A directory is read for its document files (tests/data/test_inputs.py); one with none is an error."""
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.md").write_text("not a documents file\n")
    _fails(
        capsys,
        _args(empty, good_file, tmp_path / "root"),
        tmp_path / "root",
        "--documents_train_file",
        "holds no .txt/.text/.jsonl/.ndjson/.parquet file",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, good_file, capsys):
    locked = tmp_path / "locked.txt"
    locked.write_text(GOOD)
    locked.chmod(0)
    _fails(
        capsys,
        _args(locked, good_file, tmp_path / "root"),
        tmp_path / "root",
        "--documents_train_file",
        "permission denied",
    )


def test_empty_file(tmp_path, good_file, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _fails(
        capsys,
        _args(empty, good_file, tmp_path / "root"),
        tmp_path / "root",
        "--documents_train_file",
        "empty",
    )


@pytest.mark.parametrize(
    "content", ["no delimiter at all\n", f"the delimiter {DELIMITER} only inside a line\n"]
)
def test_no_delimiter_line(tmp_path, good_file, capsys, content):
    path = tmp_path / "plain.txt"
    path.write_text(content)
    _fails(
        capsys,
        _args(good_file, path, tmp_path / "root"),
        tmp_path / "root",
        "--documents_valid_file",
        "no line equal to --end_of_document",
    )


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (
            {"min_sample_length": "20", "max_sample_length": "10"},
            ("--min_sample_length (20)", "--max_sample_length (10)"),
        ),
        ({"max_sample_length": "0"}, ("--max_sample_length", "positive")),
        ({"min_sample_length": "-3"}, ("--min_sample_length", "positive")),
        ({"max_sample_length": "many"}, ("--max_sample_length", "invalid int value")),
        (
            {"tokenizer_cls_name": "NoSuchTokenizer"},
            ("--tokenizer_cls_name", "unknown tokenizer", "GPT2Tokenizer"),
        ),
        ({"tokenizer_engine": "fastest"}, ("--tokenizer_engine",)),
        ({"encoding_errors": "whatever"}, ("--encoding_errors",)),
        ({"end_of_document": "two words"}, ("--end_of_document", "whitespace")),
        ({"end_of_document": "  "}, ("--end_of_document", "empty")),
        ({"documents_train_file": None}, ("--documents_train_file", "required")),
    ],
)
def test_bad_flags(tmp_path, good_file, capsys, overrides, needles):
    _fails(capsys, _args(good_file, good_file, tmp_path / "root", **overrides), tmp_path / "root", *needles)


def test_unwritable_datasets_root(tmp_path, good_file, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    root = blocker / "datasets"
    assert main(_args(good_file, good_file, root)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--datasets_root" in err and "not a directory" in err
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_datasets_root(tmp_path, good_file, capsys):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    assert main(_args(good_file, good_file, root / "datasets")) == 2
    assert "--datasets_root" in capsys.readouterr().err and not (root / "datasets").exists()


def test_invalid_utf8_says_where_and_replace_works(tmp_path, good_file, capsys, gpt2, reference):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nstill fine\nbroken \xff\xfe byte\n" + DELIMITER.encode() + b"\n")
    line = _fails(
        capsys,
        _args(good_file, bad, tmp_path / "root"),
        tmp_path / "root",
        "--documents_valid_file",
        "invalid UTF-8",
    )
    assert "byte 28 (line 3)" in line and "--encoding_errors replace" in line
    assert main(_args(good_file, bad, tmp_path / "root", encoding_errors="replace")) == 0
    directory = Path(capsys.readouterr().out.strip())
    corpus = np.load(directory / "valid" / "corpus.npy")
    expected, _ = reference(gpt2, bad, DELIMITER, 16, 2, errors="replace")
    np.testing.assert_array_equal(corpus, expected)
    assert "\ufffd" in gpt2.decode(corpus.tolist())


def test_crlf_gives_the_same_dataset_as_lf(tmp_path, good_file, capsys):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(GOOD.replace("\n", "\r\n").encode())
    outputs = []
    for path, name in ((good_file, "lf"), (crlf, "crlf")):
        assert main(_args(path, path, tmp_path / "root", dataset_name=name)) == 0
        outputs.append(Path(capsys.readouterr().out.strip()))
    for split in ("train", "valid"):
        for file in ("corpus.npy", "sample_start_positions.npy"):
            assert (outputs[0] / split / file).read_bytes() == (outputs[1] / split / file).read_bytes()


def test_document_longer_than_the_window(tmp_path, good_file, capsys, gpt2, reference):
    """A 200 KB document through 4 KiB windows still works (cut at safe points, same ids)."""
    long_file = tmp_path / "long.txt"
    paragraph = "Call me Ishmael.\nSome years ago, never mind how long precisely, I went to sea.\n"
    long_file.write_text(paragraph * 2500 + DELIMITER + "\n", encoding="utf-8")
    argv = _args(long_file, good_file, tmp_path / "root", window_mb=str(4 / 1024), max_sample_length="512")
    assert main(argv) == 0
    directory = Path(capsys.readouterr().out.strip())
    description = json.loads((directory / "description.json").read_text())
    assert description["number_of_train_documents"] == 1
    expected, _ = reference(gpt2, long_file, DELIMITER, 512, 2)
    np.testing.assert_array_equal(np.load(directory / "train" / "corpus.npy"), expected)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--tokenizer_engine" in out and "--documents_train_file" in out


def test_lmfast_prepare_subcommand_is_the_same_command(tmp_path, good_file):
    import subprocess
    import sys

    argv = _args(good_file, good_file, tmp_path / "root")
    result = subprocess.run(
        [sys.executable, "-m", "lmfast", "prepare", *argv], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "root" / "t" / "0")
