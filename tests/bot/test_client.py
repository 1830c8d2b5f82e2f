"""The lmfast API client over real HTTP: request body, retries with backoff, and what is final."""

from __future__ import annotations

import pytest

from lmfast.bot.client import ApiRejected, ApiUnavailable, LmfastClient
from lmfast.generation.params import GenerationParams
from tests.bot.peers import FakeLmfastApi, closed_port_url

pytestmark = pytest.mark.anyio

PARAMS = GenerationParams(temperature=0.0, max_new_tokens=12, top_p=0.9)


def client(url: str, **options) -> LmfastClient:
    return LmfastClient(url, **{"retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, **options})


async def test_sends_the_seed_body_with_the_key():
    async with FakeLmfastApi(api_key="k") as api, client(api.url, api_key="k") as lm:
        assert await lm.generate("Once", PARAMS) == " [t=0 n=12 p=0.9 #1]"
    (body,) = api.requests
    assert body == {
        "seed_text": "Once",
        "generation_max_len": 12,
        "temperature": 0.0,
        "top_p": 0.9,
        "num_return_sequences": 1,
        "_authorization": "Bearer k",
    }


async def test_banned_words_are_sent_as_ignored_words():
    async with FakeLmfastApi() as api, client(api.url) as lm:
        await lm.generate("x", PARAMS.replace(banned_words=["bad"]))
    assert api.requests[0]["ignored_words"] == ["bad"]


async def test_busy_server_is_retried_until_it_answers():
    async with FakeLmfastApi(fail_next=2) as api, client(api.url) as lm:
        assert (await lm.generate("x", PARAMS)).endswith("#3]")
    assert len(api.requests) == 3


async def test_gives_up_after_the_retries():
    async with FakeLmfastApi(fail_next=10) as api, client(api.url) as lm:
        with pytest.raises(ApiUnavailable, match="HTTP 503: model not ready after 3 attempt"):
            await lm.generate("x", PARAMS)
    assert len(api.requests) == 3


async def test_unreachable_server_is_unavailable():
    async with client(closed_port_url(), retries=1) as lm:
        with pytest.raises(ApiUnavailable, match="ConnectError"):
            await lm.generate("x", PARAMS)


async def test_slow_answer_times_out_and_is_retried():
    async with FakeLmfastApi(slow_next=1, slow_s=1.0) as api, client(api.url, timeout_s=0.2) as lm:
        assert (await lm.generate("x", PARAMS)).endswith("#2]")


async def test_the_deadline_bounds_the_whole_call():
    async with (
        FakeLmfastApi(slow_next=5, slow_s=2.0) as api,
        client(api.url, retries=5, deadline_s=0.3) as lm,
    ):
        with pytest.raises(ApiUnavailable, match="timed out after 1 attempt"):
            await lm.generate("x", PARAMS)
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("peer", "status", "message"),
    [
        ({"api_key": "right"}, 401, "invalid API key"),
        ({"max_seed_chars": 0}, 422, "longer than the model's context"),
        ({"body": {"texts": []}}, 200, "unexpected response body"),
        ({"body": ["not", "a", "dict"]}, 200, "unexpected response body"),
    ],
)
async def test_refusals_are_final(peer, status, message):
    async with FakeLmfastApi(**peer) as api, client(api.url, api_key="wrong") as lm:
        with pytest.raises(ApiRejected, match=message) as caught:
            await lm.generate("x", PARAMS)
    assert caught.value.status == status
    assert len(api.requests) <= 1, "no retries for a request the server refused"


async def test_chat_stream_probe_and_counts():
    async with FakeLmfastApi(chat=True, max_model_len=77) as api, client(api.url) as lm:
        assert await lm.supports_chat()
        messages = [{"role": "user", "content": "two words"}]
        assert await lm.count_chat_tokens(messages) == (4, 77)
        pieces = [piece async for piece in lm.chat_stream(messages, PARAMS)]
    assert pieces == ["answer #1", " to 1 messages"]
    assert api.chat_requests[0] == {
        "messages": messages,
        "max_tokens": 12,
        "temperature": 0.0,
        "top_p": 0.9,
        "stream": True,
    }
    async with FakeLmfastApi() as base, client(base.url) as lm:
        assert not await lm.supports_chat(), "no /tokenize: a server without chat"


async def test_chat_stream_failures_are_api_errors():
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions" and b'"broken"' in request.content:
            return httpx.Response(200, text='data: {"choices": [{"delta": {"content": "half"}}]}\n\n')
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(
                200, text='data: {"error": {"message": "decode step failed"}}\n\ndata: [DONE]\n\n'
            )
        return httpx.Response(422, json={"detail": [{"msg": "prompt does not fit"}]})

    async with LmfastClient("http://lmfast", transport=httpx.MockTransport(answer)) as lm:
        with pytest.raises(ApiUnavailable, match="without \\[DONE\\]"):
            [p async for p in lm.chat_stream([{"role": "user", "content": "broken"}], PARAMS)]
        with pytest.raises(ApiUnavailable, match="decode step failed"):
            [p async for p in lm.chat_stream([{"role": "user", "content": "x"}], PARAMS)]
        with pytest.raises(ApiRejected) as rejected:
            await lm.count_chat_tokens([{"role": "user", "content": "x"}])
    assert rejected.value.status == 422 and "does not fit" in rejected.value.message
