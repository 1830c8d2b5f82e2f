"""Generation fixtures: models loaded once per session (loading costs more than decoding)."""

from __future__ import annotations

import pytest


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
