"""FastAPI dependencies: the typed server state, the running engine (503 until ready) and the
optional Bearer API key (401). Routes reach the app's state only through these."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lmfast.generation.params import GenerationParams
from lmfast.serving.batching import BatchingEngine
from lmfast.serving.config import ServeConfig
from lmfast.serving.metrics import ServeMetrics

_bearer = HTTPBearer(auto_error=False, description="Needed only when the server runs with --api_key.")


@dataclass
class ServerState:
    """Everything the routes share, in one typed object (`app.state.lmfast`).

    The model fields are filled in by the lifespan once the model is loaded; until then `engine`
    is None and generation routes answer 503.
    """

    config: ServeConfig
    metrics: ServeMetrics
    engine: BatchingEngine | None = None
    generator: Any = None
    """The loaded `lmfast.generation.Generator`."""
    default_params: GenerationParams | None = None
    """The model's generation_config.json: what fields left out of a body take."""
    model_name: str = ""
    started: int = 0
    """Unix time the model became ready (OpenAI's `created` of /v1/models)."""
    chat_template: Any = None
    """The `lmfast.models.chat_template.ChatTemplate` of /v1/chat/completions, or None."""
    chat_template_error: str = ""
    """Why chat completions are unavailable when `chat_template` is None (the 400's message)."""


def state_of(app: FastAPI) -> ServerState:
    """The state `create_app` attached to `app`."""
    return app.state.lmfast


def get_state(request: Request) -> ServerState:
    return state_of(request.app)


def get_config(state: ServerState = Depends(get_state)) -> ServeConfig:
    return state.config


def get_engine(state: ServerState = Depends(get_state)) -> BatchingEngine:
    """The app's batching engine; 503 while the model is loading or the server shuts down."""
    engine = state.engine
    if engine is None or not engine.running:
        raise HTTPException(
            503, "the model is not ready (starting up or shutting down)", headers={"Retry-After": "1"}
        )
    return engine


def get_generator(state: ServerState = Depends(get_state)) -> Any:
    """The loaded `Generator` (its tokenizer serves the tokenizer routes); 503 until it is loaded."""
    if state.generator is None:
        raise HTTPException(503, "the model is not ready (starting up)", headers={"Retry-After": "1"})
    return state.generator


def require_api_key(
    request: Request,
    config: ServeConfig = Depends(get_config),
    _: HTTPAuthorizationCredentials | None = Depends(_bearer),  # declares the scheme in /openapi.json
) -> None:
    """401 unless the server has no API key or the request carries exactly one header
    `Authorization: Bearer <key>`, compared byte for byte (no other case, spacing or scheme)."""
    if config.api_key is None:
        return
    given = request.headers.getlist("authorization")
    expected = f"Bearer {config.api_key}".encode()
    if len(given) != 1 or not secrets.compare_digest(given[0].encode("latin-1"), expected):
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


def require_api_key_for_metrics(request: Request, config: ServeConfig = Depends(get_config)) -> None:
    """/metrics: the API key's rule, unless `--metrics_public` opens it to scrapers."""
    if not config.metrics_public:
        require_api_key(request, config, None)
