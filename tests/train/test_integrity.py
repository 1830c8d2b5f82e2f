"""Bad files and races before training: checksummed checkpoints, corrupted `last.ckpt` on --resume,
datasets whose ids or start positions are wrong, and experiment versions claimed atomically."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmfast.models.checkpoint import CheckpointError, load_checkpoint
from lmfast.train.checkpoint import ChecksummedCheckpointIO
from lmfast.train.cli import main
from lmfast.train.config import claim_experiment_dir

from .conftest import REPO_ROOT


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lmfast train:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def saved_checkpoint(tmp_path):
    """A checkpoint written by lmfast's Lightning checkpoint writer: weights, optimizer-like state, plain values."""
    torch.manual_seed(0)
    checkpoint = {
        "state_dict": {"model.w": torch.randn(256, 256), "model.b": torch.randn(256).to(torch.bfloat16)},
        "optimizer_states": [
            {"state": {0: {"exp_avg": torch.randn(256, 256)}}, "param_groups": [{"lr": 0.1}]}
        ],
        "global_step": 7,
        "hyper_parameters": {"model_config": {"model_type": "gpt2"}},
    }
    path = tmp_path / "last.ckpt"
    ChecksummedCheckpointIO().save_checkpoint(checkpoint, path)
    return path


def test_a_written_checkpoint_loads_and_verifies(saved_checkpoint):
    loaded = load_checkpoint(saved_checkpoint)
    assert loaded["global_step"] == 7 and loaded["lmfast_checksum"]["algorithm"] == "crc32"
    assert loaded["state_dict"]["model.b"].dtype == torch.bfloat16


def _zero_block(path, fraction: float, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    at = int(len(data) * fraction)
    data[at : at + size] = bytes(min(size, len(data) - at))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_a_zeroed_block_is_refused(saved_checkpoint, fraction):
    _zero_block(saved_checkpoint, fraction)
    with pytest.raises(CheckpointError, match="last.ckpt"):
        load_checkpoint(saved_checkpoint)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_unreadable_files_are_one_error(saved_checkpoint, damage):
    data = saved_checkpoint.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "random": np.random.default_rng(0).bytes(len(data)),
    }[damage]
    saved_checkpoint.write_bytes(damaged)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(saved_checkpoint)
    assert str(saved_checkpoint) in str(error.value) and "\n" not in str(error.value)


def _fake_experiment(tmp_path, dataset_dir, content: bytes):
    """An experiment dir as lmfast writes it, with `content` as its last.ckpt."""
    experiment = tmp_path / "runs" / "x" / "0"
    (experiment / "checkpoints").mkdir(parents=True)
    (experiment / "checkpoints" / "last.ckpt").write_bytes(content)
    description = {"dataset_dir": str(dataset_dir), "model": "gpt2-tiny", "max_steps": 4, "num_workers": 0}
    (experiment / "description.json").write_text(json.dumps(description))
    return experiment


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", bytes(range(256)) * 64])
def test_resume_from_a_corrupted_last_ckpt_is_one_line_exit_2(tmp_path, dataset_dir, capsys, content):
    experiment = _fake_experiment(tmp_path, dataset_dir, content)
    before = sorted(p.name for p in experiment.rglob("*"))
    assert main(["--resume", str(experiment)]) == 2
    line = _error_line(capsys)
    assert "--resume" in line and "last.ckpt" in line
    assert sorted(p.name for p in experiment.rglob("*")) == before  # nothing written


def test_resume_from_a_zeroed_last_ckpt_is_refused(tmp_path, dataset_dir, saved_checkpoint, capsys):
    _zero_block(saved_checkpoint, 0.5)
    experiment = _fake_experiment(tmp_path, dataset_dir, saved_checkpoint.read_bytes())
    assert main(["--resume", str(experiment)]) == 2
    line = _error_line(capsys)
    assert "--resume" in line and ("checksum mismatch" in line or "corrupted" in line)


def test_changed_weights_under_a_stale_checksum_are_refused(saved_checkpoint):
    """A zeroed block that every zip/pickle layer accepts: only the checksum of the values sees it."""
    checkpoint = torch.load(saved_checkpoint, weights_only=True)
    checkpoint["state_dict"]["model.w"][3, :64] = 0.0  # a valid file whose content changed
    torch.save(checkpoint, saved_checkpoint)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(saved_checkpoint)


def _copy_dataset(dataset_dir, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(dataset_dir, copy)
    return copy


def _argv(dataset, tmp_path) -> list[str]:
    return ["--dataset_dir", str(dataset), "--experiments_root", str(tmp_path / "e"), "--num_workers", "0"]


def test_a_token_id_beyond_the_vocabulary_is_refused_before_training(dataset_dir, tmp_path, capsys):
    dataset = _copy_dataset(dataset_dir, tmp_path)
    corpus = np.load(dataset / "train" / "corpus.npy", mmap_mode="r+")
    corpus[len(corpus) // 2] = 60000  # >= GPT-2's 50257 ids
    corpus.flush()
    del corpus
    assert main(_argv(dataset, tmp_path)) == 2
    line = _error_line(capsys)
    assert "train/corpus.npy: token id 60000" in line and "vocab_size 50257" in line
    assert not (tmp_path / "e").exists()


def test_start_positions_past_the_corpus_are_refused(dataset_dir, tmp_path, capsys):
    dataset = _copy_dataset(dataset_dir, tmp_path)
    path = dataset / "valid" / "sample_start_positions.npy"
    starts = np.load(path)
    starts[-1] = 2**44  # the 256 TB allocation of the issue
    np.save(path, starts)
    assert main(_argv(dataset, tmp_path)) == 2
    line = _error_line(capsys)
    assert "valid/sample_start_positions.npy" in line and "stay below the corpus length" in line
    assert not (tmp_path / "e").exists()


def test_a_corpus_with_a_bad_header_is_refused(dataset_dir, tmp_path, capsys):
    dataset = _copy_dataset(dataset_dir, tmp_path)
    path = dataset / "train" / "corpus.npy"
    data = bytearray(path.read_bytes())
    data[:6] = b"NOTNPY"
    path.write_bytes(bytes(data))
    assert main(_argv(dataset, tmp_path)) == 2
    assert "--dataset_dir" in _error_line(capsys)


def _claim_after(barrier, root, queue) -> None:
    barrier.wait()  # all processes claim at the same instant
    queue.put(claim_experiment_dir(root, "race").name)


def test_concurrent_claims_get_distinct_versions(tmp_path):
    (tmp_path / "race" / "1").mkdir(parents=True)  # an existing run is never reused; gaps are filled
    context = multiprocessing.get_context("spawn")
    count = 6
    barrier, queue = context.Barrier(count), context.Queue()
    workers = [context.Process(target=_claim_after, args=(barrier, tmp_path, queue)) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    names = sorted(int(queue.get(timeout=5)) for _ in workers)
    assert names == [0, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_train_processes_started_together_get_different_versions(dataset_dir, tmp_path):
    command = [
        sys.executable, "-m", "lmfast", "train", "--dataset_dir", str(dataset_dir), "--model", "gpt2-tiny",
        "--experiments_root", str(tmp_path), "--experiment_name", "race", "--batch_size", "4", "--max_steps", "1",
        "--limit_val_batches", "1", "--num_workers", "0", "--num_generated_samples", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    printed = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    assert printed == [str(tmp_path / "race" / "0"), str(tmp_path / "race" / "1")]
    for path in printed:  # each run has its own complete experiment, nothing mixed
        experiment = tmp_path / "race" / path.rsplit("/", 1)[-1]
        assert torch.load(experiment / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
        assert len(list((experiment / "logs").glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("tokenizer.json", '{"model": 3}', "not a Hugging Face tokenizer.json"),
        ("tokenizer.json", "{", "not a Hugging Face tokenizer.json"),
        ("tokenizer_config.json", "{not json", "tokenizer_config.json: unreadable"),
    ],
)
def test_a_corrupt_dataset_tokenizer_is_refused_before_training(
    dataset_dir, tmp_path, capsys, name, content, needle
):
    dataset = _copy_dataset(dataset_dir, tmp_path)
    (dataset / "tokenizer" / name).write_text(content)
    assert main(_argv(dataset, tmp_path)) == 2
    line = _error_line(capsys)
    assert "--dataset_dir" in line and needle in line, line
    assert not (tmp_path / "e").exists()
