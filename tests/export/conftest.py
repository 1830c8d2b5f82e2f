"""Export fixtures: one export per test session (an export costs tens of seconds on 2 cores).

The ONNX backend's tests live here too (tests/export/test_onnx_backend.py): they need the export.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def onnx_dir(varied_model_dir, tmp_path_factory) -> Path:
    """`varied_model_dir` exported to fp32 ONNX (an HF-dir export)."""
    from lmfast.export import ExportConfig, export_onnx

    return export_onnx(
        ExportConfig(source=varied_model_dir, output=tmp_path_factory.mktemp("exports") / "fp32")
    )


@pytest.fixture(scope="session")
def trained_experiment(tmp_path_factory, nietzsche_dir) -> Path:
    """A real experiment dir: Nietzsche prepared by `lmfast prepare`, then 4 steps of `lmfast train`
    (gpt2-tiny), so the export tests read checkpoints exactly as the training stage writes them."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("pipeline")
    repo = Path(__file__).resolve().parents[2]
    prepare = [
        *(sys.executable, "-m", "lmfast", "prepare"),
        *("--documents_train_file", str(nietzsche_dir / "train.txt")),
        *("--documents_valid_file", str(nietzsche_dir / "valid.txt")),
        *("--end_of_document", "[END_OF_DOCUMENT]", "--tokenizer_cls_name", "GPT2Tokenizer"),
        *("--max_sample_length", "64", "--min_sample_length", "8"),
        *("--datasets_root", str(root / "datasets"), "--dataset_name", "nietzsche"),
    ]
    train = [
        *(sys.executable, "-m", "lmfast", "train", "--model", "gpt2-tiny", "--num_workers", "0"),
        *("--dataset_dir", str(root / "datasets" / "nietzsche" / "0")),
        *("--experiments_root", str(root / "experiments"), "--experiment_name", "nietzsche"),
        *("--batch_size", "8", "--max_steps", "4", "--val_check_interval", "4", "--limit_val_batches", "2"),
        *("--generation_max_new_tokens", "4", "--log_every_n_steps", "2"),
    ]
    for command in (prepare, train):
        result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    return root / "experiments" / "nietzsche" / "0"
