"""Generation fixtures: models loaded once per session (loading costs more than decoding)."""

from __future__ import annotations

from pathlib import Path

import pytest

GPT2_ASSETS = Path(__file__).resolve().parents[2] / "lmfast" / "assets" / "gpt2"


@pytest.fixture(scope="session")
def varied_model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 with wide initial weights: its greedy output does not collapse into one
    repeated token (as the default 0.02 init does), so token-for-token comparisons mean something."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    directory = tmp_path_factory.mktemp("varied_gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, initializer_range=0.3)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(GPT2_ASSETS).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def torch_generator(varied_model_dir):
    from lmfast.generation import Generator

    return Generator.load(varied_model_dir, backend="torch", num_threads=2)


def _run_to_end(session, adds: dict[int, list]) -> dict[int, list[int]]:
    """Step a session until empty, adding (prompt, params) pairs at the given step numbers.

    Returns:
        Generated token ids per row id.
    """
    tokens: dict[int, list[int]] = {}
    step = 0
    while len(session) or any(s >= step for s in adds):
        for prompt, params in adds.get(step, []):
            for row_id in session.add(prompt, params):
                tokens[row_id] = []
        for event in session.step():
            tokens[event.row_id].append(event.token_id)
        step += 1
    return tokens


@pytest.fixture(scope="session")
def run_to_end():
    """`run_to_end(session, {step: [(prompt, params), ...]}) -> {row_id: [token ids]}`."""
    return _run_to_end
