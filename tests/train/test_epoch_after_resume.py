"""The epoch a resumed run logs is the data's: a run that ended at --max_steps mid-epoch, then
resumed for more steps, logs the epoch an uninterrupted run logs at the same step (Lightning's own
epoch counter moves on when a run stops at max_steps)."""

from __future__ import annotations

import logging

import pytest

from lmfast.models.dataset import PreparedDataset
from lmfast.train.cli import main
from lmfast.train.config import TrainConfig
from lmfast.train.run import train

pytestmark = pytest.mark.slow

COMMON = {
    "model": "gpt2-tiny",
    "batch_size": 8,
    "learning_rate": 2e-3,
    "log_every_n_steps": 1,
    "val_check_interval": 1000,
    "limit_val_batches": 1,
    "num_generated_samples": 0,
    "num_workers": 0,
}


def test_a_run_extended_past_max_steps_logs_the_data_epoch(dataset_dir, tmp_path, caplog):
    batches_per_epoch = -(-len(PreparedDataset(dataset_dir).train) // COMMON["batch_size"])
    assert batches_per_epoch > 5  # both runs stay in the first epoch of the data
    values = {**COMMON, "dataset_dir": str(dataset_dir), "experiments_root": str(tmp_path)}
    first = train(TrainConfig(**values, experiment_name="short", max_steps=3))
    with caplog.at_level(logging.INFO, logger="lmfast"):
        assert main(["--resume", str(first), "--max_steps", "5", "--num_workers", "0"]) == 0
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("step 4/", "step 5/"))]
    assert [line.split(" loss ")[0] for line in steps] == ["step 4/5 epoch 0", "step 5/5 epoch 0"]
