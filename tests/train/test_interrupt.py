"""Real signals on a real `lmfast train` process: Ctrl-C, SLURM's SIGUSR1 and `kill -9` each leave a
`last.ckpt` that `--resume` continues from, bit for bit, even before the first validation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmfast.models.checkpoint import load_checkpoint
from lmfast.train.config import TrainConfig
from lmfast.train.run import train

from .conftest import REPO_ROOT, read_scalars

pytestmark = pytest.mark.slow

COMMON = {
    "model": "gpt2-tiny",
    "batch_size": 8,
    "learning_rate": 2e-3,
    "num_warmup_steps": 2,
    "dropout": 0.1,
    "log_every_n_steps": 1,
    "val_check_interval": 1000,  # no validation before the signal: the first checkpoint is the signal's
    "limit_val_batches": 2,
    "num_generated_samples": 0,
}
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
}


def _flags(values: dict) -> list[str]:
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


def _start(dataset_dir: Path, root: Path, name: str, **extra) -> subprocess.Popen:
    """`python -m lmfast train` in its own process group, as a terminal runs it (Ctrl-C reaches all of it)."""
    values = {**COMMON, "dataset_dir": dataset_dir, "experiments_root": root, "experiment_name": name}
    command = [sys.executable, "-m", "lmfast", "train", *_flags({**values, "max_steps": 100000, **extra})]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )


def _wait_for_step(process: subprocess.Popen, step: int, timeout: float = 300) -> list[str]:
    """stderr lines up to the log line of optimizer step `step`."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line, f"train exited early: {''.join(lines)[-3000:]}"
        lines.append(line)
        if f"step {step}/" in line:
            return lines
    raise AssertionError(f"no step {step} after {timeout} s")


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def test_ctrl_c_before_the_first_validation_checkpoints_and_resumes_bit_for_bit(dataset_dir, tmp_path):
    process = _start(dataset_dir, tmp_path, "cut", num_workers=1)  # the worker gets the Ctrl-C too
    _wait_for_step(process, 2)
    os.killpg(process.pid, signal.SIGINT)
    code, out, err = _finish(process)
    experiment = tmp_path / "cut" / "0"
    assert code == 130, err
    checkpoint = torch.load(experiment / "checkpoints" / "last.ckpt", weights_only=True)
    step = checkpoint["global_step"]
    assert step >= 2 and sorted(p.name for p in (experiment / "checkpoints").iterdir()) == ["last.ckpt"]
    message = [line for line in err.splitlines() if line.startswith("lmfast train:")]
    assert message == [
        f"lmfast train: stopped by SIGINT at step {step}; {experiment}/checkpoints/last.ckpt holds it, "
        f"continue with: lmfast train --resume {experiment}"
    ]
    assert (tmp_path / "cut" / "latest").resolve() == experiment.resolve()  # hf/ of the stopped run

    total = step + 3
    resumed = subprocess.run(
        [sys.executable, "-m", "lmfast", "train", "--resume", str(tmp_path / "cut" / "latest"),
         "--max_steps", str(total), "--num_workers", "0"],
        capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {experiment} at step {step} of {total}" in resumed.stderr
    assert "from scratch" not in resumed.stderr

    # an uninterrupted run of the same total: every step's loss and learning rate agree exactly
    full = train(
        TrainConfig(**COMMON, dataset_dir=str(dataset_dir), experiments_root=str(tmp_path),
                    experiment_name="full", max_steps=total, num_workers=0)
    )  # fmt: skip
    expected, got = read_scalars(full, "train/loss"), read_scalars(experiment, "train/loss")
    assert sorted(expected) == sorted(got) == list(range(total))
    assert got == expected
    assert read_scalars(experiment, "train/lr") == read_scalars(full, "train/lr")


def test_slurm_preemption_signal_checkpoints_and_exits_128_plus_signal(dataset_dir, tmp_path):
    process = _start(dataset_dir, tmp_path, "slurm", num_workers=0)
    _wait_for_step(process, 1)
    process.send_signal(signal.SIGUSR1)  # sbatch --signal=USR1@90: the warning before the job is killed
    code, _, err = _finish(process)
    assert code == 128 + signal.SIGUSR1, err
    assert "stopped by SIGUSR1 at step" in err
    assert torch.load(tmp_path / "slurm/0/checkpoints/last.ckpt", weights_only=True)["global_step"] >= 1


def test_kill_9_loses_at_most_the_wall_clock_cadence(dataset_dir, tmp_path):
    # a cadence shorter than a step: last.ckpt is rewritten (atomically) at every step boundary
    process = _start(dataset_dir, tmp_path, "killed", num_workers=0, checkpoint_every_minutes=0.0001)
    _wait_for_step(process, 3)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    # whole and checksummed (lmfast's loader verifies it): what `--resume` reads first
    assert load_checkpoint(tmp_path / "killed/0/checkpoints/last.ckpt")["global_step"] >= 2
