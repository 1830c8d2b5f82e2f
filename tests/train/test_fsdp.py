"""FSDP for real: two CPU processes (gloo) started by Lightning, with an exact mid-run resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import REPO_ROOT, read_scalars

pytestmark = pytest.mark.slow

# the same `lmfast train` flags, run by every rank, with a callback that stops the run at a step
STOP_AT = """
import sys
import lightning.pytorch as pl
from lmfast.train.cli import config_from_args
from lmfast.train.run import train

class StopAt(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= int(sys.argv[1]):
            trainer.should_stop = True

print(train(config_from_args(sys.argv[2:]), callbacks=[StopAt()]))
"""


def _flags(dataset_dir, root, name: str) -> list[str]:
    return [
        "--dataset_dir", str(dataset_dir), "--model", "gpt2-tiny", "--accelerator", "cpu", "--devices", "2",
        "--strategy", "fsdp", "--batch_size", "4", "--learning_rate", "2e-3", "--num_warmup_steps", "2",
        "--max_steps", "6", "--log_every_n_steps", "1", "--val_check_interval", "4", "--limit_val_batches", "2",
        "--num_workers", "0", "--num_generated_samples", "2", "--generation_max_new_tokens", "4",
        "--experiments_root", str(root),
        "--experiment_name", name,
    ]  # fmt: skip


def _run(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_fsdp_on_two_cpu_processes_resumes_exactly(dataset_dir, tmp_path):
    """6 steps uninterrupted == 3 steps, stopped, then `lmfast train --resume` to 6 (losses bit for bit)."""
    full = _run([sys.executable, "-m", "lmfast", "train", *_flags(dataset_dir, tmp_path, "full")])
    assert full == str(tmp_path / "full" / "0")
    script = tmp_path / "stop_at.py"
    script.write_text(STOP_AT)
    cut = _run([sys.executable, str(script), "3", *_flags(dataset_dir, tmp_path, "cut")])
    assert torch.load(f"{cut}/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    assert _run([sys.executable, "-m", "lmfast", "train", "--resume", cut, "--num_workers", "0"]) == cut
    # both ranks used one run dir
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["0", "latest"]

    description = json.loads((tmp_path / "cut" / "0" / "description.json").read_text())
    assert description["world_size"] == 2 and description["global_step"] == 6
    last = torch.load(f"{cut}/checkpoints/last.ckpt", weights_only=True)
    assert last["LMDataModule"]["world_size"] == 2 and last["LMDataModule"]["batches_consumed"] == 6
    assert all(k.startswith("model.") for k in last["state_dict"])  # a full state dict, exportable as is
    expected, got = (
        read_scalars(tmp_path / "full" / "0", "train/loss"),
        read_scalars(tmp_path / "cut" / "0", "train/loss"),
    )
    assert len(expected) == 6 and sorted(got) == sorted(expected)
    assert [got[s] for s in sorted(got)] == [expected[s] for s in sorted(expected)]
    assert (tmp_path / "cut" / "0" / "hf" / "model.safetensors").is_file()
    # text samples from the gathered shards: the same at each shared validation (seeded by step)
    samples = [
        json.loads(line) for line in (tmp_path / "full" / "0" / "generated.txt").read_text().splitlines()
    ]
    resumed = [
        json.loads(line) for line in (tmp_path / "cut" / "0" / "generated.txt").read_text().splitlines()
    ]
    assert {s["step"] for s in samples} == {0, 4, 6} and all(s["prompt"] for s in samples)
    texts = [(s["prompt"], s["generated"]) for s in samples if s["step"] == 4]
    assert [(s["prompt"], s["generated"]) for s in resumed if s["step"] == 4] == texts
