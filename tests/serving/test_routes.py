"""The HTTP API in-process (TestClient, lifespan on): seed routes, OpenAI routes, errors, metrics, playground."""

from __future__ import annotations

import json
from typing import Any

import pytest

GREEDY = {"temperature": 0.0}


def test_health_version_and_models(client, generator):
    assert client.get("/health_check/").json() == {"status": "ok"}
    version = client.get("/version/").json()
    assert version["model"] == generator.model_name and version["version"]
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [generator.model_name]


def test_generated_texts_returns_continuations_only(client, generator):
    body = {"seed_text": "Truth is", "generation_max_len": 7, "num_return_sequences": 1, **GREEDY}
    response = client.post("/generated_texts/", json=body)
    assert response.status_code == 200
    expected = generator("Truth is", max_new_tokens=7, temperature=0.0)[0]
    assert response.json() == {"texts": expected}
    assert not response.json()["texts"][0].startswith("Truth is")


def test_generated_texts_defaults_and_several_sequences(client):
    response = client.post(
        "/generated_texts/", json={"seed_text": "A", "generation_max_len": 3, "num_return_sequences": 3}
    )
    assert response.status_code == 200
    assert len(response.json()["texts"]) == 3


def test_generated_texts_rejects_unknown_fields_by_name(client):
    response = client.post("/generated_texts/", json={"seed_text": "A", "max_len": 3})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "max_len"]


def test_completions_prompt_list_and_n_in_openai_order(client, generator):
    body = {"prompt": ["Truth is", "Hello"], "max_tokens": 5, "n": 2, **GREEDY}
    data = client.post("/v1/completions", json=body).json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    texts = generator(["Truth is", "Hello"], max_new_tokens=5, temperature=0.0, num_return_sequences=2)
    assert [c["text"] for c in data["choices"]] == [texts[0][0], texts[0][1], texts[1][0], texts[1][1]]
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert {c["finish_reason"] for c in data["choices"]} == {"length"}
    usage = data["usage"]
    assert usage["completion_tokens"] == 20
    assert usage["prompt_tokens"] == generator.count_tokens("Truth is") + generator.count_tokens("Hello")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completions_stop_sequence_cuts_text_and_reports_stop(client, generator):
    full = generator("Truth is", max_new_tokens=12, temperature=0.0)[0][0]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    data = client.post(
        "/v1/completions", json={"prompt": "Truth is", "max_tokens": 12, "stop": stop, **GREEDY}
    ).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == full[: full.index(stop)]


def test_completions_seed_makes_sampling_reproducible(client):
    body = {"prompt": "Truth is", "max_tokens": 8, "temperature": 1.0, "seed": 1234}
    first = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    second = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert first == second


def _sse_events(response: Any) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_streaming_sends_openai_chunks_then_done(client, generator):
    body = {"prompt": "Truth is", "max_tokens": 6, "stream": True, **GREEDY}
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(choice["text"] for c in chunks for choice in c["choices"])
    assert text == generator("Truth is", max_new_tokens=6, temperature=0.0)[0][0]
    assert chunks[-1]["choices"][-1]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "n": 17}, "n"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "stream": True, "logprobs": 1}, "stream"),
        ({"prompt": [[1, 2], [50257]]}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logit_bias": {"50257": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"1": -101}}, "logit_bias"),
        ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
        ({"prompt": "x", "stop_token_ids": [50257]}, "stop_token_ids"),
        ({"prompt": "x", "max_tokens": 2, "min_tokens": 3}, "min_tokens"),
        ({"max_tokens": 3}, "prompt"),
    ],
)
def test_invalid_completion_bodies_get_422_naming_the_field(client, body, field):
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 422
    assert any(field in err["loc"] for err in response.json()["detail"]), response.json()


def test_prompt_longer_than_the_context_is_422_on_prompt(client):
    response = client.post("/v1/completions", json={"prompt": "word " * 400, "max_tokens": 4})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "prompt"] and "context" in detail["msg"]
    # the server keeps working
    assert client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_prompt_over_the_server_character_limit_is_422(make_client):
    with make_client(max_prompt_chars=10) as client:
        response = client.post("/generated_texts/", json={"seed_text": "x" * 11})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "seed_text"]


def test_api_key_guards_the_api_but_not_health(make_client):
    with make_client(api_key="sesame") as client:
        assert client.get("/health_check/").status_code == 200
        for method, path, body in [
            ("get", "/v1/models", None),
            ("post", "/v1/completions", {"prompt": "x", "max_tokens": 1}),
            ("post", "/generated_texts/", {"seed_text": "x", "generation_max_len": 1}),
        ]:
            denied = client.request(method, path, json=body)
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
            wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            allowed = client.request(method, path, json=body, headers={"Authorization": "Bearer sesame"})
            assert allowed.status_code == 200


def test_metrics_expose_requests_batches_tokens_and_latency(client):
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 0})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'lmfast_http_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'lmfast_http_requests_total{route="/v1/completions",status="422"} 1.0' in text
    assert "lmfast_generated_tokens_total 3.0" in text
    for name in (
        "lmfast_queue_depth",
        "lmfast_active_rows",
        "lmfast_batch_size_bucket",
        "lmfast_tokens_per_second",
        "lmfast_request_latency_seconds_bucket",
        "lmfast_time_to_first_token_seconds_bucket",
    ):
        assert name in text


def test_playground_page_streams_from_the_completions_endpoint(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "v1/completions" in page and "stream: true" in page and "getReader" in page


def test_not_ready_outside_the_lifespan(generator, tiny_model_dir):
    from fastapi.testclient import TestClient

    from lmfast.serving.app import create_app
    from lmfast.serving.config import ServeConfig

    client = TestClient(create_app(ServeConfig(model=str(tiny_model_dir)), generator=generator))
    assert client.get("/health_check/").status_code == 503  # no `with`: lifespan never ran
    response = client.post("/v1/completions", json={"prompt": "x"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_streaming_usage_chunk_on_request(client, generator):
    body = {"prompt": "Truth is", "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as response:
        events = _sse_events(response)
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    assert last["usage"]["prompt_tokens"] == generator.count_tokens("Truth is")


def test_request_timeout_answers_504_and_frees_the_batch(make_client):
    with make_client(request_timeout_s=0.05) as client:
        response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 240})
        assert response.status_code == 504 and "timed out" in response.json()["detail"]
        with client.stream(
            "POST", "/v1/completions", json={"prompt": "x", "max_tokens": 240, "stream": True}
        ) as r:
            events = _sse_events(r) if r.status_code == 200 else None
        if events is not None:  # timed out mid-stream (else still in the queue: a plain 504)
            assert json.loads(events[-2])["error"]["code"] == 504 and events[-1] == "[DONE]"
        engine = client.app.state.lmfast.engine
        assert engine.stop(timeout=10)  # nothing left running: the timed-out rows were dropped
        metrics = client.get("/metrics").text
        assert 'lmfast_rejected_requests_total{reason="timeout"} 2.0' in metrics


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"],
)
def test_post_bodies_that_are_not_labelled_json_get_415(client, content_type):
    """A browser sends these cross-site without a CORS preflight: no web page may drive the server."""
    body = '{"seed_text": "Truth is", "generation_max_len": 4, "temperature": 0}'
    headers = {} if content_type is None else {"Content-Type": content_type}
    for path in ("/generated_texts/", "/v1/completions"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415, (path, response.text)
        assert response.json() == {"detail": "Content-Type must be application/json"}
    labelled = client.post(
        "/generated_texts/", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert labelled.status_code == 200, labelled.text
