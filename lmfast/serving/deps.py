"""FastAPI dependencies: the running engine (503 until ready) and the optional Bearer API key (401)."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lmfast.serving.batching import BatchingEngine
from lmfast.serving.config import ServeConfig

_bearer = HTTPBearer(auto_error=False, description="Needed only when the server runs with --api_key.")


def get_config(request: Request) -> ServeConfig:
    return request.app.state.config


def get_engine(request: Request) -> BatchingEngine:
    """The app's batching engine; 503 while the model is loading or the server shuts down."""
    engine: BatchingEngine | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.running:
        raise HTTPException(
            503, "the model is not ready (starting up or shutting down)", headers={"Retry-After": "1"}
        )
    return engine


def require_api_key(
    config: ServeConfig = Depends(get_config),
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """401 unless the server has no API key or the request carries `Authorization: Bearer <key>`."""
    if config.api_key is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if (
        credentials is None
        or credentials.scheme.lower() != "bearer"
        or not secrets.compare_digest(given.encode(), config.api_key.encode())
    ):
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
