"""DDP for real: two CPU processes (gloo) started by Lightning, each training on its own shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_ddp_on_two_cpu_processes(dataset_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "lmfast",
        "train",
        "--dataset_dir",
        str(dataset_dir),
        "--model",
        "gpt2-tiny",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--batch_size",
        "4",
        "--max_steps",
        "4",
        "--val_check_interval",
        "4",
        "--limit_val_batches",
        "2",
        "--num_workers",
        "0",
        "--num_generated_samples",
        "1",
        "--generation_max_new_tokens",
        "4",
        "--experiments_root",
        str(tmp_path),
        "--experiment_name",
        "ddp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "ddp" / "0"
    assert result.stdout.strip().splitlines()[-1] == str(experiment)
    # both ranks used one run dir
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["0", "latest"]

    description = json.loads((experiment / "description.json").read_text())
    assert description["world_size"] == 2 and description["global_step"] == 4
    last = torch.load(experiment / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["LMDataModule"]["world_size"] == 2 and last["LMDataModule"]["batches_consumed"] == 4
    assert all(k.startswith("model.") for k in last["state_dict"])
    assert (experiment / "hf" / "model.safetensors").is_file()
    assert "validation at step 4" in (experiment / "logs" / "train.log").read_text()
