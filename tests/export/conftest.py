"""Export fixtures: one export per test session (an export costs tens of seconds on 2 cores).

The ONNX backend's tests live here too (tests/export/test_onnx_backend.py): they need the export.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GPT2_ASSETS = Path(__file__).resolve().parents[2] / "lmfast" / "assets" / "gpt2"


@pytest.fixture(scope="session")
def source_model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 HF dir with wide initial weights, so greedy output varies token to token."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    directory = tmp_path_factory.mktemp("source_gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, initializer_range=0.3)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(GPT2_ASSETS).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def onnx_dir(source_model_dir, tmp_path_factory) -> Path:
    """`source_model_dir` exported to fp32 ONNX (an HF-dir export)."""
    from lmfast.export import ExportConfig, export_onnx

    return export_onnx(
        ExportConfig(source=source_model_dir, output=tmp_path_factory.mktemp("exports") / "fp32")
    )


PROMPTS = [
    "Supposing that Truth is a woman--what then?",
    "God is dead.",
    "Whoever fights monsters should see to it that in the process he does not become a monster",
    "a",
]


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)
