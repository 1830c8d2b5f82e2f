"""Many inputs (globs, directories, JSONL, Parquet, .gz/.zst), --valid_fraction, sharded prepare + merge."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmfast.data.cli import main
from lmfast.models.dataset import PreparedDataset

REPO = Path(__file__).resolve().parents[2]
DELIMITER = "[END_OF_DOCUMENT]"
ARRAYS = ("corpus.npy", "sample_start_positions.npy")


def _delimited(documents: list[str]) -> str:
    return "".join(f"{d}\n{DELIMITER}\n" for d in documents)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, nietzsche_dir, documents_of) -> tuple[Path, list[str]]:
    """The Nietzsche valid documents spread over five files of every format, plus one plain file."""
    documents = documents_of(nietzsche_dir / "valid.txt", DELIMITER)
    root = tmp_path_factory.mktemp("inputs")
    parts = np.array_split(np.arange(len(documents)), 5)
    chunk = [[documents[i] for i in part] for part in parts]
    inputs = root / "inputs"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "a.txt").write_text(_delimited(chunk[0]), encoding="utf-8")
    with gzip.open(inputs / "b.txt.gz", "wt", encoding="utf-8") as file:
        file.write(_delimited(chunk[1]))
    (inputs / "c.jsonl").write_text("".join(json.dumps({"text": d, "id": 1}) + "\n" for d in chunk[2]))
    lines = "".join(json.dumps({"text": d}) + "\n\n" for d in chunk[3]).encode()  # blank lines are skipped
    (inputs / "sub" / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"id": list(range(len(chunk[4]))), "text": chunk[4]}), inputs / "sub" / "e.parquet",
                   row_group_size=7)  # fmt: skip
    (inputs / ".hidden.txt").write_text("not read\n")
    (inputs / "notes.md").write_text("not read either\n")
    (root / "all.txt").write_text(_delimited(documents), encoding="utf-8")
    return root, documents


def _args(root: Path, train: list[str], *rest: str, name: str = "t") -> list[str]:
    return [
        "--quiet", "--documents_train_file", *train, "--end_of_document", DELIMITER,
        "--tokenizer_cls_name", "GPT2Tokenizer", "--max_sample_length", "64", "--min_sample_length", "4",
        "--datasets_root", str(root / "datasets"), "--dataset_name", name,
        "--tokenizer_engine", "tokenizers", *rest,  # the reference engine: no engine proof per run
    ]  # fmt: skip


def _run(capsys, argv: list[str]) -> Path:
    assert main(argv) == 0, capsys.readouterr().err
    return Path(capsys.readouterr().out.strip())


def _fails(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert all(needle in lines[0] for needle in needles), lines[0]
    assert captured.out == ""


def test_every_format_gives_the_single_file_dataset(tmp_path, corpus_dir, capsys):
    """A directory of text, .gz, JSONL, .zst JSONL and Parquet = one delimited file of the same documents."""
    root, _ = corpus_dir
    valid = ["--documents_valid_file", str(root / "all.txt")]
    single = _run(capsys, _args(tmp_path, [str(root / "all.txt")], *valid, name="single"))
    many = _run(capsys, _args(tmp_path, [str(root / "inputs")], *valid, name="many"))
    globbed = _run(capsys, _args(tmp_path, [str(root / "inputs/**/[a-e].*"), str(root / "inputs/a.txt")], *valid,
                                 name="glob"))  # fmt: skip
    for directory in (many, globbed):
        for name in ARRAYS:
            assert (single / "train" / name).read_bytes() == (directory / "train" / name).read_bytes()
    description = PreparedDataset(many).description
    records = description["input_files"]
    names = [Path(r["path"]).name for r in records]
    assert names == ["a.txt", "b.txt.gz", "c.jsonl", "d.jsonl.zst", "e.parquet", "all.txt"]
    assert [r["split"] for r in records] == ["train"] * 5 + ["valid"]
    assert [r["format"] for r in records[:5]] == ["text", "text", "jsonl", "jsonl", "parquet"]
    assert [r["compression"] for r in records[:5]] == ["none", "gzip", "none", "zstd", "none"]
    for record in records:
        data = Path(record["path"]).read_bytes()
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert description["documents_train_file"] == [str(root / "inputs")]
    assert PreparedDataset(globbed).description["input_files"] == records  # the named twice file counts once


def test_compressed_stream_equals_plain_file_at_tiny_windows(tmp_path, nietzsche_dir, capsys):
    """A 300 KB document through 4 KiB windows (window growth and safe cuts) reads the same from .zst."""
    lines = (nietzsche_dir / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    data = "".join(line for line in lines if line.strip() != DELIMITER).encode()[:300_000]
    plain = tmp_path / "long.txt"
    plain.write_bytes(data[: data.rindex(b"\n") + 1] + DELIMITER.encode() + b"\nshort one\n")
    packed = tmp_path / "long.txt.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    outputs = []
    for path in (plain, packed):
        args = _args(tmp_path, [str(path)], "--documents_valid_file", str(path), "--window_mb", str(4 / 1024),
                     name=path.name)  # fmt: skip
        outputs.append(_run(capsys, args))
    for split in ("train", "valid"):
        for name in ARRAYS:
            assert (outputs[0] / split / name).read_bytes() == (outputs[1] / split / name).read_bytes()


def test_valid_fraction_is_a_deterministic_document_split(tmp_path, corpus_dir, capsys):
    root, documents = corpus_dir
    first = _run(capsys, _args(tmp_path, [str(root / "inputs")], "--valid_fraction", "0.2", name="f"))
    again = _run(capsys, _args(tmp_path, [str(root / "inputs")], "--valid_fraction", "0.2", name="f"))
    assert first.name == "0" and again.name == "1"
    for split in ("train", "valid"):
        for name in ARRAYS:
            assert (first / split / name).read_bytes() == (again / split / name).read_bytes()
    description = PreparedDataset(first).description
    held_out = description["number_of_valid_documents"]
    assert held_out + description["number_of_train_documents"] == len(documents)
    assert 0.05 * len(documents) < held_out < 0.4 * len(documents)
    assert description["documents_valid_file"] == [] and description["valid_fraction"] == 0.2


@pytest.mark.slow
def test_sharded_prepare_merges_to_the_single_run_bytes(tmp_path, corpus_dir, capsys):
    """N=2 and N=3 shards, each a real `lmfast prepare` subprocess run concurrently, merged by
    `lmfast prepare merge`: byte-identical arrays and tokenizer, the same description but for
    times and `merged_from`. Slow (~15 s on 2 loaded cores): five subprocesses import lmfast."""
    root, _ = corpus_dir
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    held_out = ("--valid_fraction", "0.2")
    valid_files = ("--documents_valid_file", str(root / "inputs" / "sub"))  # sharded like the train files
    for count, valid in ((2, held_out), (3, valid_files)):
        flags = _args(tmp_path, [str(root / "inputs")], *valid, name=f"s{count}")
        single = _run(capsys, flags)
        shard_flags = [*flags, "--num_shards", str(count)]
        jobs = [
            subprocess.Popen([sys.executable, "-m", "lmfast.prepare", *shard_flags, "--shard_index", str(i)],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)
        ]  # fmt: skip
        shards = []
        for job in jobs:
            out, err = job.communicate(timeout=300)
            assert job.returncode == 0, err
            shards.append(out.strip())
        assert [Path(s).name for s in shards] == [f"shard-{i:05d}-of-{count:05d}" for i in range(count)]
        merged = _run(capsys, ["merge", "--quiet", *reversed(shards), "--remove_shards"])
        for split in ("train", "valid"):
            for name in ARRAYS:
                assert (single / split / name).read_bytes() == (merged / split / name).read_bytes(), (
                    count,
                    split,
                )
        assert (single / "tokenizer" / "tokenizer.json").read_bytes() == (
            merged / "tokenizer" / "tokenizer.json"
        ).read_bytes()
        expected = json.loads((single / "description.json").read_text())
        got = json.loads((merged / "description.json").read_text())
        assert got.pop("merged_from") == [Path(s).name for s in shards]
        for key in ("created_at", "wall_time_s"):
            expected.pop(key), got.pop(key)
        assert got == expected
        assert not any(Path(s).exists() for s in shards)
        PreparedDataset(merged).verify()


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path, corpus_dir, capsys):
    root, _ = corpus_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    (bad / "broken.jsonl").write_text('{"text": "fine"}\n\n{"text": \n')
    (bad / "y.txt.gz").write_bytes(b"not gzip at all")
    pq.write_table(pa.table({"body": ["a"]}), bad / "z.parquet")
    pq.write_table(pa.table({"text": ["a", None]}), bad / "n.parquet")
    valid = ["--documents_valid_file", str(root / "all.txt")]
    out = tmp_path / "datasets"
    cases = [
        ([str(bad / "x.jsonl")], ("--documents_train_file", "x.jsonl line 2", "'text'")),
        ([str(bad / "broken.jsonl")], ("broken.jsonl line 3", "invalid JSON")),
        ([str(bad / "y.txt.gz")], ("y.txt.gz", "not a valid gzip stream")),
        ([str(bad / "z.parquet")], ("z.parquet", "no column 'text'", "--text_column", "body")),
        ([str(bad / "n.parquet")], ("n.parquet row 1", "null")),
        ([str(bad / "*.none")], ("--documents_train_file", "no file matches")),
        ([str(tmp_path / "missing.txt")], ("--documents_train_file", "file not found")),
    ]
    for train, needles in cases:
        _fails(capsys, _args(tmp_path, train, *valid), *needles)
        assert not out.exists()
    _fails(capsys, _args(tmp_path, [str(root / "all.txt")]), "--documents_valid_file", "--valid_fraction")
    # errors in command-line order: the missing train file before the missing valid file
    _fails(
        capsys, _args(tmp_path, [str(tmp_path / "missing.txt")]), "--documents_train_file", "file not found"
    )
    both = _args(tmp_path, [str(root / "all.txt")], *valid, "--valid_fraction", "0.1")
    _fails(capsys, both, "--valid_fraction", "not both")
    _fails(capsys, [*_args(tmp_path, [str(root / "all.txt")], *valid), "--shard_index", "2", "--num_shards", "2"],
           "--shard_index")  # fmt: skip
    shard = _run(
        capsys, [*_args(tmp_path, [str(root / "inputs")], *valid), "--num_shards", "2", "--shard_index", "0"]
    )
    _fails(capsys, ["merge", str(shard)], "missing [1]")
    _fails(capsys, [*_args(tmp_path, [str(root / "inputs")], *valid), "--num_shards", "2", "--shard_index", "0"],
           "exists already")  # fmt: skip
    other = _run(capsys, [*_args(tmp_path, [str(root / "inputs")], *valid, "--max_sample_length", "32"),
                          "--num_shards", "2", "--shard_index", "1"])  # fmt: skip
    _fails(capsys, ["merge", str(shard), str(other)], "another run", "max_sample_length")
    assert sorted(p.name for p in (out / "t").iterdir()) == [shard.name, other.name]


@pytest.mark.timeout(120)  # the two link loops below once never finished
def test_each_input_is_read_once_through_links_and_link_loops(tmp_path, corpus_dir, capsys, caplog):
    root, documents = corpus_dir
    looped = tmp_path / "looped"
    (looped / "sub").mkdir(parents=True)
    (looped / "a.txt").write_bytes((root / "all.txt").read_bytes())
    (looped / "self").symlink_to(".")  # a loop: looped/self/self/... is looped
    (looped / "sub" / "up").symlink_to("..")  # a second loop, through a subdirectory
    (looped / "alias.txt").symlink_to("a.txt")  # the same file under another name
    valid = ["--documents_valid_file", str(root / "all.txt")]
    cases = {
        "dir": [str(looped)],
        "glob": [str(looped / "**" / "*.txt")],
        "named": [str(looped / "self" / "sub" / "up" / "a.txt"), str(looped / "alias.txt"), str(looped)],
    }
    for name, train in cases.items():
        caplog.clear()
        dataset = PreparedDataset(_run(capsys, _args(tmp_path, train, *valid, name=name)))
        records = [r for r in dataset.description["input_files"] if r["split"] == "train"]
        assert [Path(r["path"]).name for r in records] == ["a.txt"], records
        if name != "glob":  # pathlib's ** never enters a directory link: nothing to skip
            assert any("read each file once; skipped" in r.getMessage() for r in caplog.records), name


def test_the_same_file_as_train_and_valid_is_a_warning(tmp_path, corpus_dir, capsys, caplog):
    root, _ = corpus_dir
    link = tmp_path / "again.txt"
    link.symlink_to(root / "all.txt")
    _run(capsys, _args(tmp_path, [str(root / "all.txt")], "--documents_valid_file", str(link)))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("again.txt is also a --documents_train_file" in w for w in warnings), warnings


def test_a_cut_zstd_stream_is_refused_as_truncated(tmp_path, corpus_dir, capsys):
    """Cut anywhere inside a frame, a .zst input is one line naming it: no partial dataset."""
    root, _ = corpus_dir
    docs = [f"document {i}: " + "words " * 20 for i in range(200)]
    lines = [
        ("".join(json.dumps({"text": d}) + "\n" for d in half)).encode() for half in (docs[:100], docs[100:])
    ]
    frames = [zstandard.ZstdCompressor().compress(part) for part in lines]
    text_frame = zstandard.ZstdCompressor().compress(_delimited(docs).encode())
    valid = ["--documents_valid_file", str(root / "all.txt")]
    whole = tmp_path / "whole.jsonl.zst"
    whole.write_bytes(frames[0] + frames[1])
    cases = {
        "second frame cut": (frames[0] + frames[1][: len(frames[1]) // 2], "jsonl.zst"),
        "second frame header only": (frames[0] + frames[1][:6], "jsonl.zst"),
        "one frame cut": (text_frame[:-3], "txt.zst"),
        "one frame half": (text_frame[: len(text_frame) // 2], "txt.zst"),
    }
    for i, (name, (data, suffix)) in enumerate(cases.items()):
        path = tmp_path / f"cut{i}.{suffix}"
        path.write_bytes(data)
        _fails(capsys, _args(tmp_path, [str(path)], *valid), str(path), "truncated")
        assert not (tmp_path / "datasets").exists(), name
    dataset = PreparedDataset(_run(capsys, _args(tmp_path, [str(whole)], *valid, name="whole")))
    assert dataset.description["number_of_train_documents"] == 200  # both frames read


def _shards(tmp_path: Path, root: Path, capsys) -> list[Path]:
    flags = _args(tmp_path, [str(root / "inputs")], "--valid_fraction", "0.2", name="m")
    return [_run(capsys, [*flags, "--num_shards", "2", "--shard_index", str(i)]) for i in range(2)]


def test_merge_verifies_every_shard_before_writing(tmp_path, corpus_dir, capsys):
    """The damage `train` would refuse after the merge is refused by the merge itself."""
    root, _ = corpus_dir
    shards = _shards(tmp_path, root, capsys)
    starts_path = shards[0] / "train" / "sample_start_positions.npy"
    corpus_path = shards[1] / "train" / "corpus.npy"
    good_starts, good_corpus = starts_path.read_bytes(), corpus_path.read_bytes()

    def far_start() -> None:
        starts = np.load(starts_path)
        starts[5] = 10**12
        np.save(starts_path, starts)

    def ids_overwritten() -> None:
        corpus = np.load(corpus_path, mmap_mode="r+")
        corpus[3:9] = 65535  # in place: same size, same header
        corpus.flush()

    def bad_tokenizer() -> None:
        for shard in shards:
            (shard / "tokenizer" / "tokenizer.json").write_text('{"model": 3}')

    for damage, needle in (
        (far_start, "not strictly increasing at sample 6"),
        (ids_overwritten, "token id 65535 at position 3 is outside the vocabulary"),
        (bad_tokenizer, "not a Hugging Face tokenizer.json"),
    ):
        damage()
        before = sorted(p.name for p in shards[0].parent.iterdir())
        _fails(capsys, ["merge", *map(str, shards)], "shards: ", needle)
        assert sorted(p.name for p in shards[0].parent.iterdir()) == before  # nothing written
        starts_path.write_bytes(good_starts)
        corpus_path.write_bytes(good_corpus)


def test_bad_lines_skip_is_refused_for_document_files(tmp_path, corpus_dir, capsys):
    root, _ = corpus_dir
    valid = ["--documents_valid_file", str(root / "all.txt")]
    train = [str(root / "inputs" / "c.jsonl")]
    _fails(capsys, _args(tmp_path, train, *valid, "--bad_lines", "skip"), "--bad_lines", "dialogs only")
    assert not (tmp_path / "datasets").exists()
