"""A real Nietzsche dataset for the training tests, prepared once per session by `lmfast prepare`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def read_scalars(experiment_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of a TensorBoard scalar, over every event file of the run (resumes append new files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for path in sorted((experiment_dir / "logs").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({event.step: event.value for event in accumulator.Scalars(tag)})
    return values


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory, nietzsche_dir) -> Path:
    """Nietzsche tokenized with GPT-2 into samples of 8..64 tokens, by the real `python -m lmfast.prepare`."""
    root = tmp_path_factory.mktemp("datasets")
    command = [
        sys.executable,
        "-m",
        "lmfast.prepare",
        "--documents_train_file",
        str(nietzsche_dir / "train.txt"),
        "--documents_valid_file",
        str(nietzsche_dir / "valid.txt"),
        "--end_of_document",
        "[END_OF_DOCUMENT]",
        "--tokenizer_cls_name",
        "GPT2Tokenizer",
        "--max_sample_length",
        "64",
        "--min_sample_length",
        "8",
        "--datasets_root",
        str(root),
        "--dataset_name",
        "nietzsche",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root / "nietzsche" / "0"
