"""From a validated HTTP request to engine results: submit, wait, collect or stream, map errors.

Both route modules use it, so 429/503/504/422 and client-disconnect handling are written once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError

from lmfast.generation.params import GenerationParams, ParamError
from lmfast.serving.batching import (
    BatchingEngine,
    EngineStoppedError,
    GenerationJob,
    JobFailedError,
    QueueFullError,
)
from lmfast.serving.deps import state_of
from lmfast.serving.metrics import ServeMetrics

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away; its job was cancelled and nobody reads the answer."""


@dataclass
class SequenceResult:
    """One finished continuation."""

    text: str
    finish_reason: str | None
    tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    """`TokenLogprob` per generated token, when the request asked for logprobs."""
    prompt_logprobs: list[Any] | None = None


def invalid(field: str, message: str) -> RequestValidationError:
    """A 422 in FastAPI's usual shape, naming the body field at fault."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": None}]
    )


def make_params(field_of: dict[str, str], defaults: GenerationParams, **values: Any) -> GenerationParams:
    """A request's parameters by the one default rule (`GenerationParams.with_request`): each value it
    gives (not None), else the served model's DEFAULTS (its generation_config.json, else lmfast's); a
    `ParamError` turned into a 422 naming the HTTP field.

    Args:
        field_of: GenerationParams field -> HTTP body field, to name the right one in the 422.
        defaults: the server's `default_params`.
    """
    try:
        return defaults.with_request(**values)
    except ParamError as exc:
        raise invalid(field_of.get(exc.field, exc.field), str(exc)) from None


def logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """OpenAI's `logit_bias` (token id strings -> bias) as GenerationParams takes it; 422 on a key
    that is not a token id of this model."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit() and len(key) <= 12) or int(key) >= vocab_size:
            raise invalid("logit_bias", f"keys must be token ids in [0, {vocab_size}), got {key!r}")
        out[int(key)] = value
    return out


def check_prompts(prompts: Sequence[str], max_chars: int, field: str) -> None:
    """422 naming `field` for a text over `--max_prompt_chars`: a cheap bound before any tokenizing."""
    if any(len(p) > max_chars for p in prompts):
        raise invalid(field, f"a prompt may have at most {max_chars} characters on this server")


def check_prompt_tokens(
    prompt_ids: Sequence[Sequence[int]], max_tokens: int, context: int, field: str
) -> None:
    """One bound on prompt tokens for text, token ids and messages alike: each prompt must leave
    room for an answer in the model's `context`, and a request's prompts together may have at most
    `max_tokens` (`--max_prompt_tokens`). 422 naming `field` otherwise."""
    longest = max((len(ids) for ids in prompt_ids), default=0)
    if longest >= context:
        raise invalid(
            field,
            f"a prompt is {longest} tokens; the model's context is {context} (prompt and answer together)",
        )
    total = sum(len(ids) for ids in prompt_ids)
    if total > max_tokens:
        raise invalid(
            field,
            f"the prompts are {total} tokens together; this server takes at most {max_tokens} per request",
        )


async def _wait_disconnect(request: Request) -> None:
    # once the body is read, receive() returns only at disconnect (or when the response is done)
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` unless the client disconnects first.

    Raises:
        ClientDisconnected: the client went away first (`awaitable` is cancelled).
    """
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise ClientDisconnected
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()


async def start(
    engine: BatchingEngine,
    request: Request,
    prompts: Sequence[str | list[int]],
    params: GenerationParams,
    timeout_s: float,
    prompt_field: str,
    grammar: str | None = None,
) -> tuple[GenerationJob, float]:
    """Queue a job and wait until it joins the batch (`grammar`: structured output, compiled).

    Returns:
        The admitted job and its deadline (`time.perf_counter()` seconds).

    Raises:
        HTTPException: 429 (queue full, with Retry-After), 503 (not running), 504 (timed out),
            422 (the model refused a prompt, e.g. longer than its context), 500 (a server bug).
        ClientDisconnected: the client left while waiting.
    """
    job = GenerationJob(prompts, params, asyncio.get_running_loop(), grammar)
    state = state_of(request.app)
    metrics: ServeMetrics = state.metrics
    # token ids cost nothing to count: refuse them before any text is tokenized
    check_prompt_tokens(
        [p for p in prompts if isinstance(p, list)],
        state.config.max_prompt_tokens,
        engine.generator.max_context,
        prompt_field,
    )
    try:  # off the engine thread and off the event loop: long texts take a while
        await asyncio.to_thread(job.tokenize, engine.generator.codec)
    except ValueError as exc:
        raise invalid(prompt_field, f"cannot be tokenized ({type(exc).__name__})") from None
    except Exception as exc:
        raise http_error(metrics, exc) from None
    assert job.prompt_ids is not None  # set by tokenize
    check_prompt_tokens(
        job.prompt_ids, state.config.max_prompt_tokens, engine.generator.max_context, prompt_field
    )
    try:
        engine.submit(job)
    except QueueFullError as exc:
        metrics.rejected.labels("queue_full").inc()
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    except EngineStoppedError as exc:
        metrics.rejected.labels("not_running").inc()
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
    deadline = job.arrived + timeout_s
    try:
        await until_disconnect(request, asyncio.wait_for(asyncio.shield(job.admitted), timeout_s))
    except asyncio.TimeoutError:
        engine.cancel(job)
        metrics.rejected.labels("timeout").inc()
        raise HTTPException(504, f"request timed out after {timeout_s:g} s in the queue") from None
    except ValueError as exc:  # the model refused a prompt (ParamError "prompt": too long)
        raise invalid(prompt_field, str(exc)) from None
    except EngineStoppedError as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
    except JobFailedError as exc:
        raise http_error(metrics, exc) from None
    except BaseException:
        engine.cancel(job)
        raise
    return job, deadline


async def _collect(job: GenerationJob, deadline: float) -> list[SequenceResult]:
    results = [SequenceResult("", None, 0) for _ in range(job.n_rows)]
    parts: list[list[str]] = [[] for _ in range(job.n_rows)]
    async for pieces in job.pieces(deadline):
        for piece in pieces:
            result = results[piece.index]
            parts[piece.index].append(piece.text)
            result.tokens += 1
            result.token_ids.append(piece.token_id)
            if piece.logprob is not None:
                result.logprobs.append(piece.logprob)
            if piece.prompt_logprobs is not None:
                result.prompt_logprobs = piece.prompt_logprobs
            if piece.finished:
                results[piece.index].finish_reason = piece.finish_reason
    for result, texts in zip(results, parts, strict=True):
        result.text = "".join(texts)
    return results


async def collect(
    engine: BatchingEngine, request: Request, job: GenerationJob, deadline: float, route: str
) -> list[SequenceResult]:
    """Wait for every sequence of an admitted job; cancel it if the client leaves or time runs out.

    Raises:
        HTTPException: 504 (timed out), 503 (engine stopped), 500 (decode step failed).
        ClientDisconnected: the client left.
    """
    try:
        results = await until_disconnect(request, _collect(job, deadline))
    except BaseException as exc:
        engine.cancel(job)
        raise http_error(state_of(request.app).metrics, exc) from None
    observe_finished(state_of(request.app).metrics, job, route)
    return results


def http_error(metrics: ServeMetrics, exc: BaseException) -> BaseException:
    """The HTTP answer to a failed job (an HTTPException), or `exc` itself when nobody listens."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        metrics.rejected.labels("timeout").inc()
        return HTTPException(504, "request timed out while generating")
    if isinstance(exc, EngineStoppedError):
        return HTTPException(503, str(exc))
    if isinstance(exc, ClientDisconnected | asyncio.CancelledError):
        return exc  # counted once, where the app answers a request its client ended
    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, JobFailedError):  # logged with its cause by the engine
        return HTTPException(500, str(exc))
    logger.error("generation failed", exc_info=exc)
    return HTTPException(500, f"generation failed on the server ({type(exc).__name__})")


def observe_finished(metrics: ServeMetrics, job: GenerationJob, route: str) -> None:
    now = time.perf_counter()
    metrics.request_latency.labels(route).observe(now - job.arrived)
    if job.first_token_at is not None:
        metrics.time_to_first_token.observe(job.first_token_at - job.arrived)
