"""OpenAI-compatible `/v1/completions` and `/v1/models`, so existing clients work unchanged."""

from __future__ import annotations

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
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
)
from lmfast.serving.structured import compile_grammar

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

_FIELD_OF = {
    "max_new_tokens": "max_tokens",
    "num_return_sequences": "n",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "stop": "stop",
    "seed": "seed",
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
    prompts = body.prompts()
    dispatch.check_prompts(prompts, config.max_prompt_chars, "prompt")
    params = dispatch.make_params(_FIELD_OF, max_new_tokens=body.max_tokens, **body.sampling_values())
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
    choices = [
        CompletionChoice(text=r.text, index=i, finish_reason=_finish_reason(r.finish_reason))
        for i, r in enumerate(results)
    ]
    usage = usage_of(job, results)
    return CompletionResponse(id=completion_id, created=created, model=model, choices=choices, usage=usage)


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
