"""OpenAI's `POST /v1/chat/completions`: the messages rendered with the model's chat template, then
decoded by the same batching engine as /v1/completions (continuous batching, SSE streaming).

The prompt is the template's text with the generation prompt, tokenized without added special
tokens, exactly as transformers' `apply_chat_template(..., add_generation_prompt=True)` makes it;
generation stops at any of the model's eos ids (`<|im_end|>` for ChatML models).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from lmfast.generation.model_files import LOADABLE
from lmfast.generation.text import encode_ids
from lmfast.models.chat_template import ChatTemplate, ChatTemplateError
from lmfast.models.source import resolve_source
from lmfast.serving import dispatch
from lmfast.serving.batching import BatchingEngine, GenerationJob
from lmfast.serving.chat_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    TokenizeRequest,
    TokenizeResponse,
    TokenLogprobEntry,
    TopLogprob,
)
from lmfast.serving.config import ServeConfig
from lmfast.serving.deps import get_engine, get_generator, require_api_key, state_of
from lmfast.serving.routes.openai import (
    FIELD_OF as COMPLETIONS_FIELD_OF,
)
from lmfast.serving.routes.openai import (
    LOGPROB_FLOOR,
    _finish_reason,
    stream_failure,
    stream_response,
    stream_usage,
    usage_of,
)
from lmfast.serving.structured import compile_grammar

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])
# vLLM's /tokenize: lets a client (the bot) fit a conversation into the context without a tokenizer
extras = APIRouter(tags=["extensions"], dependencies=[Depends(require_api_key)])

# the completions body's names (SamplingFields), but max_completion_tokens
_FIELD_OF = {**COMPLETIONS_FIELD_OF, "max_new_tokens": "max_completion_tokens"}
_ROUTE = "/v1/chat/completions"
NO_TEMPLATE = (
    "this model has no chat template (no chat_template.jinja and no chat_template in "
    "tokenizer_config.json): start lmfast serve with --chat_template FILE, or use /v1/completions"
)


def load_chat_template(config: ServeConfig, model_dir: Path | None = None) -> ChatTemplate | None:
    """`--chat_template`'s file, else the template in the served model's tokenizer files, else None.

    MODEL_DIR is the served model's files when the caller has resolved `config.model` already.

    Raises:
        ChatTemplateError: the --chat_template file (or the model's template) cannot be used.
    """
    if model_dir is None and config.model:
        try:
            model_dir = resolve_source(config.model, LOADABLE).path
        except (FileNotFoundError, ValueError):
            model_dir = None
    if config.chat_template is not None:
        return ChatTemplate.from_file(config.chat_template, model_dir)
    return ChatTemplate.from_model_dir(model_dir) if model_dir is not None else None


def install(app: FastAPI, config: ServeConfig, model_dir: Path | None = None) -> None:
    """Register the route and load the chat template once.

    Raises:
        ChatTemplateError: the --chat_template file is unusable (the user asked for it: fail now).
    """
    error = NO_TEMPLATE
    try:
        template = load_chat_template(config, model_dir)
    except ChatTemplateError as exc:
        if config.chat_template is not None:
            raise
        # the model's own template is broken: completions still work, chat answers why not
        logger.warning("chat completions disabled: %s", exc)
        template, error = None, f"this model's chat template cannot be used: {exc}"
    state = state_of(app)
    state.chat_template = template
    state.chat_template_error = error
    app.include_router(router)
    app.include_router(extras)


def _render(request: Request, messages: list[Any], add_generation_prompt: bool = True) -> str:
    """The conversation's prompt text; 400 when there is no template or it refuses the messages.
    Work proportional to the messages: call it in a worker thread, never on the event loop."""
    state = state_of(request.app)
    if state.chat_template is None:
        raise HTTPException(400, state.chat_template_error)
    try:
        return state.chat_template.render(
            [m.for_template() for m in messages], add_generation_prompt=add_generation_prompt
        )
    except ChatTemplateError as exc:
        raise HTTPException(400, str(exc)) from None


def _check_message_chars(request: Request, messages: list[Any]) -> None:
    """422 naming `messages` when their text together is over `--max_prompt_chars`, before the
    template renders them (the rendered prompt is checked again: the template adds text)."""
    max_chars = state_of(request.app).config.max_prompt_chars
    if sum(len(m.text()) for m in messages) > max_chars:
        raise dispatch.invalid(
            "messages", f"the messages may have at most {max_chars} characters on this server"
        )


def _chat_prompt(request: Request, messages: list[Any], add_generation_prompt: bool = True) -> list[int]:
    """The conversation's token ids, as apply_chat_template(tokenize=True) makes them (the
    template writes every special token itself). Runs in a worker thread."""
    prompt = _render(request, messages, add_generation_prompt)
    dispatch.check_prompts([prompt], state_of(request.app).config.max_prompt_chars, "messages")
    return encode_ids(state_of(request.app).generator.codec.tokenizer, prompt, add_special_tokens=False)


def _tokenize(request: Request, body: TokenizeRequest, codec: Any) -> list[int]:
    """/tokenize's ids (in a worker thread): messages as chat renders them, a prompt as
    /v1/completions encodes it, or without special tokens when asked."""
    if body.messages is not None:
        if body.add_special_tokens:  # rare: the template's text with the tokenizer's specials too
            text = _render(request, body.messages, body.add_generation_prompt)
            dispatch.check_prompts([text], state_of(request.app).config.max_prompt_chars, "messages")
            return encode_ids(codec.tokenizer, text)
        return _chat_prompt(request, body.messages, body.add_generation_prompt)
    if body.add_special_tokens is not False:  # as /v1/completions encodes a text prompt
        return codec.encode(body.prompt or "")  # (with the prefix training documents began with)
    return encode_ids(codec.tokenizer, body.prompt or "", add_special_tokens=False)


@extras.post("/tokenize", response_model=TokenizeResponse, responses={400: {}, 401: {}, 422: {}, 503: {}})
async def tokenize(
    body: TokenizeRequest, request: Request, generator: Any = Depends(get_generator)
) -> TokenizeResponse:
    """Token ids of a prompt (as /v1/completions encodes it) or of messages (as /v1/chat/completions).

    Bounded as the generation routes are (`--max_prompt_chars`, `--max_prompt_tokens`, the model's
    context; 422 naming the field), and tokenized in a worker thread, never on the event loop."""
    config = state_of(request.app).config
    field = "messages" if body.messages is not None else "prompt"
    if body.messages is not None:
        _check_message_chars(request, body.messages)
    else:
        dispatch.check_prompts([body.prompt or ""], config.max_prompt_chars, "prompt")
    codec = generator.codec
    ids = await asyncio.to_thread(_tokenize, request, body, codec)
    dispatch.check_prompt_tokens([ids], config.max_prompt_tokens, generator.max_context, field)
    strs = (
        await asyncio.to_thread(lambda: [codec.tokenizer.id_to_token(t) for t in ids])
        if body.return_token_strs
        else None
    )
    return TokenizeResponse(count=len(ids), max_model_len=generator.max_context, tokens=ids, token_strs=strs)


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "JSON, or server-sent events with stream: true",
        },
        400: {"description": "the model has no chat template, or the template refused the messages"},
        401: {},
        429: {},
        503: {},
        504: {},
    },
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, engine: BatchingEngine = Depends(get_engine)
) -> ChatCompletionResponse | StreamingResponse:
    """Answer a conversation; choice j is the j-th sampled answer (`n`)."""
    state = state_of(request.app)
    if (refused := body.refusal()) is not None:
        raise dispatch.invalid(*refused)
    _check_message_chars(request, body.messages)
    prompt_ids = await asyncio.to_thread(_chat_prompt, request, body.messages)
    assert state.default_params is not None  # set with the engine
    params = dispatch.make_params(
        _FIELD_OF,
        state.default_params,
        max_new_tokens=body.max_new_tokens(),
        **body.sampling_values(),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    grammar = await compile_grammar(body, engine.generator.codec, engine.generator.info.eos_token_ids)
    job, deadline = await dispatch.start(
        engine, request, [prompt_ids], params, state.config.request_timeout_s, "messages", grammar=grammar
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = state.model_name
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        events = _sse(engine, request, job, deadline, head, include_usage)
        return stream_response(engine, job, events, state.metrics)
    results = await dispatch.collect(engine, request, job, deadline, _ROUTE)
    tokenizer = state.generator.codec.tokenizer
    logprobs = (  # decoding every alternative grows with the answer: off the event loop
        await asyncio.to_thread(lambda: [_chat_logprobs(tokenizer, r.logprobs) for r in results])
        if body.logprobs
        else [None] * len(results)
    )
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=r.text),
            logprobs=logprobs[i],
            finish_reason=_finish_reason(r.finish_reason),
        )
        for i, r in enumerate(results)
    ]
    return ChatCompletionResponse(
        id=completion_id, created=created, model=model, choices=choices, usage=usage_of(job, results)
    )


def _chat_logprobs(tokenizer: Any, entries: list[Any]) -> ChatLogprobs:
    """OpenAI's chat logprobs of the generated tokens: each token's text, UTF-8 bytes, logprob
    (of the distribution sampled from) and its `top_logprobs` alternatives."""
    ids = sorted({e.token_id for e in entries} | {t for e in entries for t, _ in e.top})
    text_of = dict(
        zip(ids, tokenizer.decode_batch([[t] for t in ids], skip_special_tokens=False), strict=True)
    )

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = text_of[token]
        return {"token": text, "logprob": max(logprob, LOGPROB_FLOOR), "bytes": list(text.encode("utf-8"))}

    return ChatLogprobs(
        content=[
            TokenLogprobEntry(
                **item(e.token_id, e.logprob), top_logprobs=[TopLogprob(**item(t, v)) for t, v in e.top]
            )
            for e in entries
        ]
    )


def _event(head: dict[str, Any], choices: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    return f"data: {json.dumps({**head, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"


async def _sse(
    engine: BatchingEngine,
    request: Request,
    job: GenerationJob,
    deadline: float,
    head: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI's chat stream: a first chunk with each choice's `role`, then `delta.content` chunks,
    a chunk with each choice's `finish_reason` and an empty delta, then `data: [DONE]`.

    With `stream_options.include_usage`, every chunk carries `"usage": null` and a last chunk with
    empty choices carries the token counts, as OpenAI sends them.
    """
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    metrics = state_of(request.app).metrics
    n = job.params.num_return_sequences
    tokens = 0
    yield _event(
        head,
        [
            {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(n)
        ],
        extra,
    )
    try:
        async for pieces in job.pieces(deadline):
            tokens += len(pieces)
            content = [
                {"index": p.index, "delta": {"content": p.text}, "logprobs": None, "finish_reason": None}
                for p in pieces
                if p.text
            ]
            if content:
                yield _event(head, content, extra)
            finished = [
                {
                    "index": p.index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": _finish_reason(p.finish_reason),
                }
                for p in pieces
                if p.finished
            ]
            if finished:
                yield _event(head, finished, extra)
    except Exception as exc:
        yield stream_failure(engine, job, metrics, exc)
    else:
        dispatch.observe_finished(metrics, job, _ROUTE)
        if include_usage:
            usage = stream_usage(job, tokens)
            yield _event(head, [], {"usage": usage})
    yield "data: [DONE]\n\n"
