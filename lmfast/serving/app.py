"""`create_app(config)`: the FastAPI app of `lmfast serve`.

The model is loaded in the lifespan (FastAPI "Lifespan Events"), never at import, and lives in the
typed `ServerState` (deps.py) with its batching engine; shutdown stops admitting requests and
finishes the running ones. Routes: the legacy API (routes/legacy.py), OpenAI's (routes/openai.py, routes/chat.py),
vLLM's tokenizer endpoints (routes/tokenizer.py), `/metrics` and the playground page at `/`.

In front of the routes, outermost first: request counting, CORS (only with
`--cors_allow_origins`), JSON-only POST bodies (415), the body read deadline (408) and the body
size limit (413, before the body is read). A rejected body is a small 422 naming the field and
the rule (errors.py), never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmfast import __version__
from lmfast.generation.model_files import LOADABLE
from lmfast.models.source import ModelSource, resolve_source
from lmfast.serving.batching import BatchingEngine
from lmfast.serving.config import ServeConfig, allowed_origins
from lmfast.serving.deps import ServerState, require_api_key, require_api_key_for_metrics
from lmfast.serving.dispatch import ClientDisconnected
from lmfast.serving.errors import validation_error_handler
from lmfast.serving.guard import BodyDeadline, RequireJSON
from lmfast.serving.metrics import ServeMetrics
from lmfast.serving.routes import chat, legacy, openai, tokenizer

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


def load_generator(config: ServeConfig, source: ModelSource | None = None) -> Any:
    """`Generator.load` with the config's model (SOURCE, when already resolved), backend, provider and
    threads (imports torch/onnx)."""
    from lmfast.generation import Generator

    return Generator.load(
        source or config.model,
        backend=config.backend,
        provider=config.provider,
        num_threads=config.num_threads,
        spin_us=config.spin_us,
    )


def create_app(
    config: ServeConfig,
    generator: Any | None = None,
    on_engine_crash: Callable[[BaseException], None] | None = None,
    source: ModelSource | None = None,
) -> FastAPI:
    """Build the app; the model is loaded when the app starts (lifespan), not here.

    Args:
        config: what to serve and how.
        generator: an already loaded `lmfast.generation.Generator` to serve instead of loading
            `config.model` (tests and benchmarks share one across apps).
        on_engine_crash: called if the engine thread dies (`lmfast serve` stops the process with
            a non-zero exit so a supervisor restarts it); without it the app keeps answering 503.
        source: `config.model` already resolved (`lmfast serve` resolves it once, to check it);
            otherwise it is resolved here, once, for both the chat template and the generator.
    """
    if generator is None and not config.model:
        raise ValueError("ServeConfig.model is empty: give a model directory (or a loaded generator)")
    if source is None and config.model:
        try:
            source = resolve_source(config.model, LOADABLE)
        except (FileNotFoundError, ValueError):  # loading the generator reports it, at start
            source = None
    metrics = ServeMetrics()
    state = ServerState(config=config, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gen = generator if generator is not None else await asyncio.to_thread(load_generator, config, source)
        engine = BatchingEngine(
            gen,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            queue_size=config.queue_size,
            metrics=metrics,
            on_crash=on_engine_crash,
            step_token_budget=config.step_token_budget,
            prefix_cache_mb=config.prefix_cache_mb,
            stall_ratio=config.stall_ratio or None,
        )
        state.generator = gen
        state.default_params = gen.default_params
        state.model_name = config.model_name or gen.model_name
        state.started = int(time.time())
        engine.start()
        state.engine = engine
        logger.info("serving %s: %s", state.model_name, config.to_dict())
        try:
            yield
        finally:
            # uvicorn has already waited for open connections; drain what is left, bounded
            drained = await asyncio.to_thread(engine.stop, config.request_timeout_s)
            if not drained:
                logger.warning("shutdown: some requests did not finish within %s s", config.request_timeout_s)

    app = FastAPI(
        title="lmfast",
        version=__version__,
        summary="Text generation with continuous batching; the legacy /generated_texts/ API and OpenAI's /v1 routes.",
        lifespan=lifespan,
        docs_url=None,  # served below, behind --api_key like every route but the public ones
        redoc_url=None,
        openapi_url=None,
    )
    app.state.lmfast = state
    app.include_router(legacy.router)
    app.include_router(openai.router)
    chat.install(app, config, source.path if source else None)  # /v1/chat/completions and the chat template
    app.include_router(tokenizer.router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="lmfast API")

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, 401: {}},
        dependencies=[Depends(require_api_key_for_metrics)],
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text: requests, queue depth, batch sizes, tokens/s, latency histograms."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:  # public: a static shell that asks for the key
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.exception_handler(ClientDisconnected)
    async def _client_gone(request: Request, exc: ClientDisconnected) -> Response:
        # the one place a request its client ended is counted (streams: routes/openai.py's on_close)
        metrics.rejected.labels("client_disconnected").inc()
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]
    # add_middleware puts each one outside the ones before it
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=config.max_body_bytes)
    app.add_middleware(BodyDeadline, timeout_s=config.body_timeout_s, metrics=metrics)
    app.add_middleware(RequireJSON)
    origins = allowed_origins(config)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_CountRequests, metrics=metrics)
    return app


class _CountRequests:
    """Pure ASGI middleware counting responses by route template and status (streams untouched)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(_route_name(scope), str(status)).inc()


def _route_name(scope: Scope) -> str:
    """The route template a request is counted under. One refused before routing (415, 413, 408)
    counts under its path when that is one of the API's routes (from the cached OpenAPI schema),
    else under "unmatched": a fuzzer must not create one series per URL."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    app = scope.get("app")
    paths = app.openapi()["paths"] if isinstance(app, FastAPI) else {}
    return str(scope["path"]) if scope["path"] in paths else "unmatched"
