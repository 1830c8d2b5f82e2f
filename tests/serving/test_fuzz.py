"""Fuzz the API: from its own OpenAPI spec (schemathesis), then with hostile bodies over real HTTP
(non-finite numbers, lone surrogates, huge and non-JSON bodies, wrong content types). No input may
produce a server error, and the server must still generate afterwards."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(generator: Any, tiny_model_dir: Path) -> Iterator[Any]:
    # a short timeout bounds the cost of generated bodies asking for thousands of tokens
    config = ServeConfig(model=str(tiny_model_dir), request_timeout_s=0.5, max_batch_size=16)
    app = create_app(config, generator=generator)
    with TestClient(app):  # runs the lifespan: the engine is up while schemathesis calls the app
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_crashes_the_server(case: Any) -> None:
    response = case.call()
    # 504 is the documented answer to a body asking for more work than the request timeout allows
    assert response.status_code < 500 or response.status_code == 504, (case.as_curl_command(), response.text)


# --- hostile bodies over real HTTP: what a generated-from-the-spec fuzzer never sends ----------
ROUTES = {
    "/v1/completions": {"prompt": "Truth is", "max_tokens": 2, "temperature": 0},
    "/generated_texts/": {"seed_text": "Truth is", "generation_max_len": 2, "temperature": 0},
    "/detokenize": {"tokens": [464, 318]},
}
FIELDS = {
    "/v1/completions": [
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "n",
        "stop",
        "seed",
        "model",
        "repetition_penalty",
        "stream",
        "stream_options",
        "user",
        "echo",
        "logprobs",
        "ignore_eos",
        "min_tokens",
        "stop_token_ids",
        "logit_bias",
        "suffix",
    ],
    "/generated_texts/": [
        "seed_text",
        "ignored_words",
        "generation_max_len",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "num_return_sequences",
    ],
    "/detokenize": ["tokens", "model"],
}
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.api+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    None,
]
OVERFLOW = "\x00overflow\x00"  # replaced by the literal 1e309 (json.dumps cannot write it)
OUTCOMES: Counter[str] = Counter()

_surrogates = st.text(
    alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3
).map(lambda bad: f"Truth {bad} is")
_hostile = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, OVERFLOW, -1e308, 2**64, -(2**63)]),
    _surrogates,
    st.lists(_surrogates, min_size=1, max_size=3),
    st.sampled_from([20_000, 990_000, 1_500_000]).map(lambda n: "a" * n),  # both sides of the 1 MB limit
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=12,
    ),
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    path = draw(st.sampled_from(sorted(ROUTES)))
    body: dict[str, Any] = dict(ROUTES[path])
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(FIELDS[path]) | _surrogates)
        body[key] = draw(_hostile)
    raw = json.dumps(body, allow_nan=True).replace(json.dumps(OVERFLOW), "1e309").encode()
    if draw(st.booleans()) and draw(st.booleans()):
        raw = draw(st.binary(max_size=64))  # not JSON at all, maybe not UTF-8
    # mostly JSON, so most bodies get past the 415 to the validation they are meant to test
    return path, raw, draw(st.sampled_from(["application/json"] * 6 + CONTENT_TYPES))


@pytest.fixture(scope="module")
def live_server(generator: Any, tiny_model_dir: Path) -> Iterator[ServerThread]:
    config = ServeConfig(model=str(tiny_model_dir), max_batch_size=16, body_timeout_s=5)
    with ServerThread(create_app(config, generator=generator)) as running:
        yield running


@given(request=hostile_requests())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_hostile_bodies_never_get_a_server_error(live_server: ServerThread, request: Any) -> None:
    path, raw, content_type = request
    headers = {} if content_type is None else {"content-type": content_type}
    response = httpx.post(live_server.url + path, content=raw, headers=headers, timeout=60)
    OUTCOMES[str(response.status_code)] += 1
    assert response.status_code < 500, (path, raw[:200], content_type, response.text[:500])
    assert len(response.content) < 20_000  # errors are small: no input copied back
    if response.status_code == 422:
        response.json()  # and always valid JSON


_ids = st.lists(st.integers(-2, 50_300), min_size=0, max_size=6)
_scoring = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=12), _ids, st.lists(_ids, min_size=0, max_size=3))},
    optional={
        "max_tokens": st.integers(-1, 4),
        "echo": st.booleans(),
        "logprobs": st.one_of(st.none(), st.integers(-1, 21)),
        "n": st.integers(1, 3),
        "temperature": st.sampled_from([0, 0.5, 1.0]),
        "ignore_eos": st.booleans(),
        "min_tokens": st.integers(-1, 5),
        "stop_token_ids": _ids,
        "logit_bias": st.dictionaries(
            st.one_of(st.integers(-1, 50_300).map(str), st.text(max_size=3)),
            st.floats(-150, 150),
            max_size=3,
        ),
        "stream": st.booleans(),
        "repetition_penalty": st.sampled_from([1.0, 1.3]),
    },
)


@given(body=_scoring)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_scoring_fields_never_get_a_server_error(live_server: ServerThread, body: dict[str, Any]) -> None:
    """Combinations of the logprobs/echo/token-id fields: a 4xx or a well-formed answer."""
    response = httpx.post(live_server.url + "/v1/completions", json=body, timeout=60)
    OUTCOMES[f"scoring {response.status_code}"] += 1
    assert response.status_code < 500, (body, response.text[:500])
    if response.status_code != 200 or body.get("stream"):
        return
    for choice in response.json()["choices"]:
        logprobs = choice["logprobs"]
        assert (logprobs is None) == (body.get("logprobs") is None)
        if logprobs is not None:
            sizes = {len(logprobs[k]) for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
            assert len(sizes) == 1, logprobs


def test_the_server_still_generates_after_the_fuzz(live_server: ServerThread, generator: Any) -> None:
    print(
        f"\nhostile bodies: {sum(OUTCOMES.values())} tried, outcomes by status {dict(sorted(OUTCOMES.items()))}"
    )
    assert httpx.get(live_server.url + "/health_check/").json() == {"status": "ok"}
    body = {"prompt": "Truth is", "max_tokens": 5, "temperature": 0}
    response = httpx.post(live_server.url + "/v1/completions", json=body, timeout=60)
    assert (
        response.json()["choices"][0]["text"]
        == generator("Truth is", max_new_tokens=5, temperature=0.0)[0][0]
    )
