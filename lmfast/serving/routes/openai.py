"""OpenAI-compatible `/v1/completions` and `/v1/models`, so existing clients work unchanged."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from lmfast.serving import dispatch
from lmfast.serving.batching import BatchingEngine, GenerationJob
from lmfast.serving.deps import ServerState, get_engine, get_state, require_api_key, state_of
from lmfast.serving.metrics import ServeMetrics
from lmfast.serving.schemas import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
)
from lmfast.serving.structured import compile_grammar

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

FIELD_OF = {
    # the body field each GenerationParams field comes from, named by a 422's `loc`
    "max_new_tokens": "max_tokens",
    "num_return_sequences": "n",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "stop": "stop",
    "seed": "seed",
    "min_tokens": "min_tokens",
    "stop_token_ids": "stop_token_ids",
    "logit_bias": "logit_bias",
    "logprobs": "logprobs",
    "prompt_logprobs": "logprobs",
}
_ROUTE = "/v1/completions"


def _finish_reason(reason: str | None) -> str | None:
    # OpenAI knows "stop" (a stop sequence or end of text) and "length"
    return None if reason is None else "length" if reason == "length" else "stop"


@router.get("/models", response_model=ModelList)
async def models(state: ServerState = Depends(get_state)) -> ModelList:
    """The one served model."""
    return ModelList(data=[ModelCard(id=state.model_name, created=state.started)])


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "JSON, or server-sent events with stream: true",
        },
        401: {},
        429: {},
        503: {},
        504: {},
    },
)
async def completions(
    body: CompletionRequest,
    request: Request,
    engine: BatchingEngine = Depends(get_engine),
    state: ServerState = Depends(get_state),
) -> CompletionResponse | StreamingResponse:
    """Complete one prompt or a list; choice i*n+j is the j-th sample of prompt i."""
    config = state.config
    if (refused := body.refusal()) is not None:
        raise dispatch.invalid(*refused)
    prompts = body.prompts()
    dispatch.check_prompts([p for p in prompts if isinstance(p, str)], config.max_prompt_chars, "prompt")
    vocab_size = state.generator.codec.vocab_size
    for name, ids in (
        ("prompt", [t for p in prompts if isinstance(p, list) for t in p]),
        ("stop_token_ids", body.stop_token_ids or []),
    ):
        if any(t >= vocab_size for t in ids):
            raise dispatch.invalid(name, f"token ids must be in [0, {vocab_size})")
    logit_bias = dispatch.logit_bias(body.logit_bias, vocab_size)
    score_only = body.max_tokens == 0  # echo alone: the prompt's logprobs, nothing generated
    assert state.default_params is not None  # set with the engine
    params = dispatch.make_params(
        FIELD_OF,
        state.default_params,
        max_new_tokens=max(1, body.max_tokens),
        **body.sampling_values(),
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        stop_token_ids=body.stop_token_ids or [],
        logit_bias=logit_bias,
        logprobs=None if score_only else body.logprobs,
        prompt_logprobs=body.logprobs if body.echo else None,
    )
    grammar = await compile_grammar(body, engine.generator.codec, engine.generator.info.eos_token_ids)
    job, deadline = await dispatch.start(
        engine, request, prompts, params, config.request_timeout_s, "prompt", grammar=grammar
    )
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = state.model_name
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = _sse(engine, request, job, deadline, completion_id, created, model, include_usage)
        return stream_response(engine, job, events, state.metrics)
    results = await dispatch.collect(engine, request, job, deadline, _ROUTE)
    if score_only:
        results = [
            dispatch.SequenceResult("", "length", 0, prompt_logprobs=r.prompt_logprobs) for r in results
        ]
    # decoding the echo and the logprobs' alternatives grows with the request: off the event loop
    choices = await asyncio.to_thread(_choices, state.generator.codec.tokenizer, body, prompts, job, results)
    usage = usage_of(job, results)
    return CompletionResponse(id=completion_id, created=created, model=model, choices=choices, usage=usage)


def _choices(
    tokenizer: Any,
    body: CompletionRequest,
    prompts: list[str | list[int]],
    job: GenerationJob,
    results: list[dispatch.SequenceResult],
) -> list[CompletionChoice]:
    """The choices of a finished non-streamed job (in a worker thread)."""
    choices = []
    for i, r in enumerate(results):
        prompt = prompts[i // body.n]
        prompt_ids = job.prompt_ids[i // body.n] if job.prompt_ids else []
        echoed = "" if not body.echo else prompt if isinstance(prompt, str) else _decode(tokenizer, prompt)
        logprobs = None
        if body.logprobs is not None:
            entries = []
            if body.echo and prompt_ids:  # (an empty text prompt ran from BOS: nothing to echo)
                entries = (r.prompt_logprobs or [None] * len(prompt_ids))[-len(prompt_ids) :]
            ids = (list(prompt_ids) if body.echo else []) + r.token_ids
            logprobs = legacy_logprobs(tokenizer, ids, [*entries, *r.logprobs])
        choices.append(
            CompletionChoice(
                text=echoed + r.text,
                index=i,
                logprobs=logprobs,
                finish_reason=_finish_reason(r.finish_reason),
            )
        )
    return choices


def stream_response(
    engine: BatchingEngine, job: GenerationJob, events: AsyncIterator[str], metrics: ServeMetrics
) -> StreamingResponse:
    """The SSE response of an admitted job; the job is cancelled if the stream ends early."""

    def on_close() -> None:  # the stream ended early: the client left (or the server stops)
        if not job.done and not job.cancelled:
            engine.cancel(job)
            metrics.rejected.labels("client_disconnected").inc()

    return _SSEResponse(events, on_close=on_close)


def usage_of(job: GenerationJob, results: Sequence[dispatch.SequenceResult]) -> Usage:
    """OpenAI's `usage` of a non-streamed job."""
    completion_tokens = sum(r.tokens for r in results)
    return Usage(
        prompt_tokens=job.prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=job.prompt_tokens + completion_tokens,
    )


LOGPROB_FLOOR = -9999.0
"""Log-probabilities are reported no lower than this (-inf is not JSON), as vLLM does."""


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def legacy_logprobs(tokenizer: Any, ids: list[int], entries: list[Any]) -> CompletionLogprobs:
    """OpenAI's legacy `logprobs` of tokens `ids`: entries[i] is token i's `TokenLogprob` (None for
    a first prompt token). `top_logprobs` holds the asked-for alternatives and the token itself,
    as vLLM's; keys are the decoded token texts, `text_offset` each token's start in the text."""
    alternatives = sorted({t for e in entries if e is not None for t, _ in e.top} | set(ids))
    text_of = dict(
        zip(
            alternatives,
            tokenizer.decode_batch([[t] for t in alternatives], skip_special_tokens=False),
            strict=True,
        )
    )
    tokens = [text_of[t] for t in ids]
    offsets, position = [], 0
    for text in tokens:
        offsets.append(position)
        position += len(text)
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    for token, entry in zip(ids, entries, strict=True):
        if entry is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(max(entry.logprob, LOGPROB_FLOOR))
        top = {text_of[t]: max(v, LOGPROB_FLOOR) for t, v in entry.top}
        top.setdefault(text_of[token], max(entry.logprob, LOGPROB_FLOOR))
        top_logprobs.append(top)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top_logprobs, text_offset=offsets
    )


async def _sse(
    engine: BatchingEngine,
    request: Request,
    job: GenerationJob,
    deadline: float,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI's stream: one `data: {chunk}` event per decode step, then `data: [DONE]`.

    With `include_usage`, a last chunk with empty choices carries the token counts (OpenAI's
    `stream_options`).
    """
    head = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
    # every chunk shares its head: serialize it once, then only the choices per decode step
    prefix = "data: " + json.dumps(head, ensure_ascii=False)[:-1] + ', "choices": '
    metrics = state_of(request.app).metrics
    tokens = 0
    try:
        # job.pieces directly, not through another async generator: this loop runs once per token
        async for pieces in job.pieces(deadline):
            tokens += len(pieces)
            choices = [
                {
                    "text": p.text,
                    "index": p.index,
                    "logprobs": None,
                    "finish_reason": _finish_reason(p.finish_reason) if p.finished else None,
                }
                for p in pieces
                if p.text or p.finished
            ]
            if choices:
                yield prefix + json.dumps(choices, ensure_ascii=False) + "}\n\n"
    except Exception as exc:
        yield stream_failure(engine, job, metrics, exc)
    else:
        dispatch.observe_finished(metrics, job, _ROUTE)
        if include_usage:
            usage = stream_usage(job, tokens)
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


def stream_failure(engine: BatchingEngine, job: GenerationJob, metrics: Any, exc: Exception) -> str:
    """The SSE event that reports a failure once headers are sent (in-band, as OpenAI does).

    Raises:
        The mapped exception itself when it is not an HTTP error (a disconnect ends the stream).
    """
    engine.cancel(job)
    failure = dispatch.http_error(metrics, exc)
    if not isinstance(failure, HTTPException):
        raise failure from None
    error = {"error": {"message": failure.detail, "type": "server_error", "code": failure.status_code}}
    return f"data: {json.dumps(error)}\n\n"


def stream_usage(job: GenerationJob, completion_tokens: int) -> dict[str, int]:
    """OpenAI's `usage` of a streamed job (`stream_options.include_usage`)."""
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": job.prompt_tokens + completion_tokens,
    }


class _SSEResponse(StreamingResponse):
    """Server-sent events that call `on_close` however the stream ends (done, error, disconnect)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
