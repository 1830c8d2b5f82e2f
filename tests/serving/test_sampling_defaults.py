"""One sampling-default rule on every route, on a real server: a value the request gives wins, else
the model's generation_config.json (the generator's `default_params`), else lmfast's default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from lmfast.generation import GenerationParams, Generator

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = REPO_ROOT / "data" / "documents" / "dialogs" / "chat_template.jinja"
SEEDS = (1, 2, 3)


def test_the_rule_request_then_model_then_lmfast():
    model = GenerationParams(temperature=0.0, top_k=5)  # as a generation_config.json would say
    assert model.with_request(temperature=None, top_p=None).temperature == 0.0  # left out: the model's
    assert model.with_request(temperature=1.3).temperature == 1.3  # given: the request's
    assert model.with_request().top_p == GenerationParams().top_p == 1.0  # neither: lmfast's
    assert GenerationParams().with_request(temperature=None).temperature == 0.7


def _texts(url: str, route: str, **fields: Any) -> str:
    """The first text a route answers with FIELDS (8 new tokens)."""
    if route == "legacy":
        body = {"seed_text": "Truth is", "generation_max_len": 8, **fields}
        response = httpx.post(url + "/generated_texts/", json=body, timeout=60)
        response.raise_for_status()
        return response.json()["texts"][0]
    if route == "completions":
        body = {"prompt": "Truth is", "max_tokens": 8, **fields}
        response = httpx.post(url + "/v1/completions", json=body, timeout=60)
        response.raise_for_status()
        return response.json()["choices"][0]["text"]
    body = {"messages": [{"role": "user", "content": "Truth is"}], "max_tokens": 8, **fields}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def greedy_by_default_server(generator: Any, make_server: Any) -> Any:
    """The tiny model served with a generation_config.json that says temperature 0 (greedy)."""
    model = Generator(
        generator.backend,
        generator.codec,
        generator.info,
        default_params=GenerationParams(temperature=0.0),
        model_name="greedy-by-default",
    )
    with make_server(generator=model, chat_template=str(CHAT_TEMPLATE)) as server:
        yield server


def _seeded(route: str, seed: int) -> dict[str, int]:
    """A seed field where the route has one (the legacy route draws a fresh seed each time)."""
    return {} if route == "legacy" else {"seed": seed}


@pytest.mark.parametrize("route", ["legacy", "completions", "chat"])
def test_every_route_takes_the_models_default_and_the_requests_value(greedy_by_default_server, route):
    url = greedy_by_default_server.url
    left_out = {_texts(url, route, **_seeded(route, seed)) for seed in SEEDS}
    assert len(left_out) == 1  # the model's temperature 0: greedy, the same text whatever the seed
    assert left_out == {_texts(url, route, temperature=0.0)}
    given = {_texts(url, route, temperature=1.0, top_k=0, **_seeded(route, seed)) for seed in SEEDS}
    assert len(given) > 1  # the request's temperature 1 wins: samples differ
