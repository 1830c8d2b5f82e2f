"""A small async client for the `lmfast serve` HTTP API (docs/architecture.md §5), with retries and backoff.

The bot reaches the model only through this: HTTP, never torch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx

from lmfast.generation.params import GenerationParams

logger = logging.getLogger(__name__)

# answers that mean "not now" rather than "never": worth another attempt after a pause
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0
CHAT_PROBE_TTL_S = 60.0
"""How long the answer to "does the server speak chat?" is reused (a server may be restarted with another model)."""


class ApiError(Exception):
    """The lmfast API did not produce a continuation."""


class ApiUnavailable(ApiError):
    """Down, overloaded or too slow, even after every retry: worth trying again later."""


class ApiRejected(ApiError):
    """The API refused the request itself (bad key, prompt too long, ...): retrying will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class LmfastClient:
    """Calls `POST /generated_texts/` (continuation) or `/v1/chat/completions` (chat) on an lmfast server.

    Args:
        base_url: the server's root, e.g. `http://127.0.0.1:8000`.
        api_key: sent as `Authorization: Bearer <key>` when set.
        timeout_s: seconds to wait for one answer before it counts as a failed attempt.
        retries: extra attempts after a connection error, timeout, 429 or 5xx.
        backoff_s: first pause between attempts; doubles each time (with jitter), capped at 30 s,
            and never shorter than the server's Retry-After.
        transport: an httpx transport (tests may pass one; the default is the network).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        deadline_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self._chat_probe: tuple[bool, float] | None = None  # (answer, loop time asked)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> LmfastClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def generate(self, prompt: str, params: GenerationParams) -> str:
        """One continuation of `prompt` (the generated text only, without the prompt).

        Raises:
            ApiUnavailable: the server stayed unreachable, busy or slow through every retry.
            ApiRejected: the server answered 4xx (other than 429), or with a malformed body.
        """
        # only what a chat controls; top_k, repetition penalty etc. stay the served model's defaults
        body: dict[str, Any] = {
            "seed_text": prompt,
            "generation_max_len": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "num_return_sequences": 1,
        }
        if params.banned_words:
            body["ignored_words"] = list(params.banned_words)
        data = await self._post("/generated_texts/", body)
        texts = data.get("texts") if isinstance(data, dict) else None
        if not isinstance(texts, list) or not texts or not isinstance(texts[0], str):
            raise ApiRejected(200, f"unexpected response body: {str(data)[:200]}")
        return texts[0]

    async def supports_chat(self) -> bool:
        """Whether the server renders conversations (its model has a chat template), asked once a minute.

        Asks `POST /tokenize` with a one-message conversation: 200 means yes; 400 (no chat template)
        or 404 (an lmfast without chat) means no.

        Raises:
            ApiUnavailable, ApiRejected: as `generate` (e.g. a refused API key).
        """
        now = asyncio.get_running_loop().time()
        if self._chat_probe is not None and now - self._chat_probe[1] < CHAT_PROBE_TTL_S:
            return self._chat_probe[0]
        try:
            await self._post("/tokenize", {"messages": [{"role": "user", "content": "Hello"}]})
            supported = True
        except ApiRejected as error:
            if error.status not in (400, 404, 405):
                raise
            supported = False
        self._chat_probe = (supported, now)
        return supported

    async def count_chat_tokens(self, messages: list[dict[str, str]]) -> tuple[int, int]:
        """(prompt tokens of the conversation with the generation prompt, the model's context)."""
        data = await self._post("/tokenize", {"messages": messages})
        try:
            return int(data["count"]), int(data["max_model_len"])
        except (KeyError, TypeError, ValueError):
            raise ApiRejected(200, f"unexpected /tokenize body: {str(data)[:200]}") from None

    async def chat_stream(
        self, messages: list[dict[str, str]], params: GenerationParams
    ) -> AsyncIterator[str]:
        """The answer to a conversation, piece by piece, from `/v1/chat/completions` with stream: true.

        Retries (as `generate`) until the stream starts; a stream cut in the middle is not retried.

        Raises:
            ApiUnavailable: the server stayed unreachable, or the stream broke off.
            ApiRejected: the server refused the request (4xx other than 429).
        """
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
        }
        response = await self._send("/v1/chat/completions", body, stream=True)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise ApiRejected(200, f"malformed stream event: {data[:200]}") from None
                if "error" in chunk:
                    raise ApiUnavailable(f"the server failed mid-answer: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise ApiUnavailable(f"the answer's stream broke off: {type(error).__name__}: {error}") from None
        finally:
            await response.aclose()
        raise ApiUnavailable("the answer's stream ended without [DONE]")

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = await self._send(path, body)
        try:
            return response.json()
        except ValueError:
            raise ApiRejected(200, "response is not JSON") from None

    async def _send(self, path: str, body: dict[str, Any], stream: bool = False) -> httpx.Response:
        """POST with retries and backoff; the 200 response (its body unread when `stream`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.deadline_s if self.deadline_s is not None else float("inf"))
        last_problem = "no attempt made"
        attempts = 0
        for attempt in range(self.retries + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            attempts += 1
            retry_after = 0.0
            try:
                request = self._http.build_request(
                    "POST", path, json=body, timeout=min(self.timeout_s, remaining)
                )
                response = await self._http.send(request, stream=stream)
                if stream and response.status_code != 200:
                    await response.aread()  # the error body, then the connection goes back
                    await response.aclose()
            except httpx.TimeoutException:
                last_problem = "timed out"
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    return response
                if response.status_code not in RETRYABLE_STATUS:
                    raise ApiRejected(response.status_code, _error_message(response))
                last_problem = f"HTTP {response.status_code}: {_error_message(response)}"
                retry_after = _retry_after(response)
            if attempt == self.retries:
                break
            delay = min(
                max(self.backoff_s * 2**attempt * random.uniform(0.8, 1.2), retry_after), MAX_BACKOFF_S
            )
            if loop.time() + delay >= deadline:
                break
            logger.warning(
                "lmfast API %s (attempt %d of %d); retrying in %.1f s",
                last_problem,
                attempt + 1,
                self.retries + 1,
                delay,
            )
            await asyncio.sleep(delay)
        raise ApiUnavailable(f"{last_problem} after {attempts} attempt(s)")


def _error_message(response: httpx.Response) -> str:
    """FastAPI's `detail` (a string, or a list of validation errors) as one line."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:200] or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    return str(detail) if detail is not None else response.text[:200]


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", 0)), 0.0)
    except ValueError:  # an HTTP date: not worth parsing, the backoff covers it
        return 0.0
