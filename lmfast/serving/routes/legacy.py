"""The legacy /generated_texts/ API, kept so its clients (and the bot) work unchanged (docs/architecture.md §5)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from lmfast import __version__
from lmfast.serving import dispatch
from lmfast.serving.batching import BatchingEngine
from lmfast.serving.deps import ServerState, get_engine, get_state, require_api_key
from lmfast.serving.schemas import (
    GeneratedTextsRequest,
    GeneratedTextsResponse,
    HealthResponse,
    VersionResponse,
)

router = APIRouter(tags=["seed"])

# GenerationParams field -> this body's field, to name the right one in a 422
_FIELD_OF = {
    "max_new_tokens": "generation_max_len",
    "banned_words": "ignored_words",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "num_return_sequences": "num_return_sequences",
}


@router.get("/health_check/", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health_check(state: ServerState = Depends(get_state)) -> JSONResponse:
    """`{"status": "ok"}` once the model is loaded and requests are accepted; else 503 with status
    "unavailable" (loading, stopping, crashed), "stalled" (one engine step has run longer than
    `--stall_timeout_s`: a step is bounded by the token budget, so the engine is stuck) or
    "saturated" (the waiting queue is full: new requests get 429), so a proxy can tell them apart."""
    engine = state.engine
    if engine is None or not engine.running:
        return JSONResponse({"status": "unavailable"}, status_code=503, headers={"Retry-After": "1"})
    if engine.stalled_s() > state.config.stall_timeout_s:
        return JSONResponse({"status": "stalled"}, status_code=503, headers={"Retry-After": "5"})
    if engine.saturated:
        return JSONResponse({"status": "saturated"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok"})


@router.get(
    "/version/", response_model=VersionResponse, dependencies=[Depends(require_api_key)], responses={401: {}}
)
async def version(state: ServerState = Depends(get_state)) -> VersionResponse:
    """The lmfast version and the served model's name (behind the API key: it names the model)."""
    return VersionResponse(version=__version__, model=state.model_name)


@router.post(
    "/generated_texts/",
    response_model=GeneratedTextsResponse,
    dependencies=[Depends(require_api_key)],
    responses={401: {}, 429: {}, 503: {}, 504: {}},
)
async def generated_texts(
    body: GeneratedTextsRequest,
    request: Request,
    engine: BatchingEngine = Depends(get_engine),
    state: ServerState = Depends(get_state),
) -> GeneratedTextsResponse:
    """Continue `seed_text`; fields left out take the model's defaults (its generation_config.json)."""
    config = state.config
    dispatch.check_prompts([body.seed_text], config.max_prompt_chars, "seed_text")
    overrides = {
        "max_new_tokens": body.generation_max_len,
        "temperature": body.temperature,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "repetition_penalty": body.repetition_penalty,
        "num_return_sequences": body.num_return_sequences,
    }
    assert state.default_params is not None  # set with the engine
    params = dispatch.make_params(
        _FIELD_OF, state.default_params, **overrides, banned_words=list(body.ignored_words)
    )
    job, deadline = await dispatch.start(
        engine, request, [body.seed_text], params, config.request_timeout_s, "seed_text"
    )
    results = await dispatch.collect(engine, request, job, deadline, "/generated_texts/")
    return GeneratedTextsResponse(texts=[r.text for r in results])
