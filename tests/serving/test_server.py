"""A real uvicorn server on a free loopback port, driven by httpx and the official `openai` client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from lmfast.serving.testing import ServerThread
from tests.serving.conftest import metric, wait_for, wait_until_serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(make_server: Any) -> Iterator[ServerThread]:
    with make_server(max_batch_size=8, max_wait_ms=2) as running:
        yield running


@pytest.fixture(scope="module")
def oai(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_seed_api_over_http(server, generator):
    response = httpx.post(
        server.url + "/generated_texts/",
        json={"seed_text": "Truth is", "generation_max_len": 6, "temperature": 0},
    )
    assert response.status_code == 200
    assert response.json()["texts"] == generator("Truth is", max_new_tokens=6, temperature=0.0)[0]


def test_openai_client_completion_n_and_stop(oai, generator):
    completion = oai.completions.create(model="tiny", prompt="Truth is", max_tokens=8, temperature=0)
    expected = generator("Truth is", max_new_tokens=8, temperature=0.0)[0][0]
    assert completion.choices[0].text == expected and completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 8

    several = oai.completions.create(
        model="tiny", prompt=["A", "B"], max_tokens=3, n=3, temperature=0.9, seed=7
    )
    assert [c.index for c in several.choices] == list(range(6))

    stop = expected[len(expected) // 2 : len(expected) // 2 + 2]
    stopped = oai.completions.create(
        model="tiny", prompt="Truth is", max_tokens=8, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].text == expected[: expected.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_openai_client_streaming(oai, generator):
    stream = oai.completions.create(
        model="tiny", prompt="Truth is", max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 1
    assert (
        "".join(c.choices[0].text for c in chunks)
        == generator("Truth is", max_new_tokens=10, temperature=0.0)[0][0]
    )
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_client_models_and_errors(oai, generator):
    assert [m.id for m in oai.models.list().data] == [generator.model_name]
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model="tiny", prompt="x", max_tokens=0)


def test_concurrent_greedy_requests_batch_and_match_unbatched(server, generator):
    prompts = [f"{word} is" for word in ("Truth", "Art", "Life", "Music", "God", "Man", "Will", "Love")]
    lengths = [5, 12, 7, 16, 3, 9, 14, 6]
    expected = [
        generator(p, max_new_tokens=n, temperature=0.0)[0][0] for p, n in zip(prompts, lengths, strict=True)
    ]
    steps_before = metric(server.url, "lmfast_batch_size_count")
    single_before = metric(server.url, 'lmfast_batch_size_bucket{le="1.0"}')

    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/completions", json={"prompt": p, "max_tokens": n, "temperature": 0})
                    for p, n in zip(prompts, lengths, strict=True)
                )
            )
        return [r.json()["choices"][0]["text"] for r in responses]

    assert asyncio.run(main()) == expected
    steps = metric(server.url, "lmfast_batch_size_count") - steps_before
    single = metric(server.url, 'lmfast_batch_size_bucket{le="1.0"}') - single_before
    assert single < steps  # some decode steps advanced several requests at once


def test_disconnected_clients_are_dropped_from_the_batch(server):
    before = metric(server.url, 'lmfast_rejected_requests_total{reason="client_disconnected"}')
    tokens_before = metric(server.url, "lmfast_generated_tokens_total")
    # a streaming client that leaves after the first chunk
    with httpx.stream(
        "POST", server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 240, "stream": True}
    ) as response:
        next(response.iter_lines())
    # a non-streaming client that gives up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={"prompt": "y", "max_tokens": 240}, timeout=0.2)
    reason = 'lmfast_rejected_requests_total{reason="client_disconnected"}'
    wait_for(lambda: metric(server.url, reason) - before == 2)
    wait_for(lambda: metric(server.url, "lmfast_active_rows") == 0)
    assert metric(server.url, "lmfast_generated_tokens_total") - tokens_before < 2 * 240


def test_full_queue_answers_429_with_retry_after(make_server):
    with make_server(max_batch_size=1, queue_size=1, max_wait_ms=0) as running:

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                body = {"prompt": "x", "max_tokens": 200, "temperature": 0}
                return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(6)))

        responses = asyncio.run(main())
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 1 and codes.count(429) >= 3 and set(codes) <= {200, 429}
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
        assert client.completions.create(model="m", prompt="x", max_tokens=1).choices  # served again after


def test_api_key_with_the_openai_client(make_server):
    with make_server(api_key="sesame") as running:
        denied = openai.OpenAI(base_url=running.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            denied.completions.create(model="m", prompt="x", max_tokens=1)
        allowed = openai.OpenAI(base_url=running.url + "/v1", api_key="sesame", max_retries=0)
        assert allowed.completions.create(model="m", prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_graceful_shutdown_finishes_running_requests(make_server):
    running = make_server().start()
    results: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: results.append(
            httpx.post(running.url + "/v1/completions", json={"prompt": "x", "max_tokens": 200}, timeout=60)
        )
    )
    request.start()
    wait_for(lambda: metric(running.url, "lmfast_active_rows") >= 1)
    running.stop()
    request.join(60)
    assert results and results[0].status_code == 200
    assert results[0].json()["usage"]["completion_tokens"] == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(running.url + "/health_check/", timeout=2)


def test_lmfast_serve_command_serves_and_stops_cleanly_on_sigint(tiny_model_dir):
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "LMFAST_PORT": str(port),
        "LMFAST_LOG_LEVEL": "warning",
        "LMFAST_MAX_BATCH_SIZE": "4",
    }
    command = [sys.executable, "-m", "lmfast", "serve", str(tiny_model_dir), "--backend", "torch"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url)
        assert httpx.get(url + "/version/").json()["model"] == tiny_model_dir.name
        body = {"seed_text": "Truth is", "generation_max_len": 4}
        assert len(httpx.post(url + "/generated_texts/", json=body).json()["texts"]) == 1
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
