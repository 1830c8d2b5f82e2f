"""`create_app(config)`: the FastAPI app of `lmfast serve`.

The model is loaded in the lifespan (FastAPI "Lifespan Events"), never at import, and lives on
`app.state` with its batching engine; shutdown stops admitting requests and finishes the running
ones. Routes: the seed's API (routes/legacy.py), OpenAI's (routes/openai.py, routes/chat.py), `/metrics` and the
playground page at `/`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmfast import __version__
from lmfast.serving.batching import BatchingEngine
from lmfast.serving.compat import FormBodyAsJSON
from lmfast.serving.config import ServeConfig
from lmfast.serving.dispatch import ClientDisconnected
from lmfast.serving.metrics import ServeMetrics
from lmfast.serving.routes import chat, legacy, openai

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


def load_generator(config: ServeConfig) -> Any:
    """`Generator.load` with the config's model, backend, provider and threads (imports torch/onnx)."""
    from lmfast.generation import Generator

    return Generator.load(
        config.model,
        backend=config.backend,
        provider=config.provider,
        num_threads=config.num_threads,
        spin_us=config.spin_us,
    )


def create_app(config: ServeConfig, generator: Any | None = None) -> FastAPI:
    """Build the app; the model is loaded when the app starts (lifespan), not here.

    Args:
        config: what to serve and how.
        generator: an already loaded `lmfast.generation.Generator` to serve instead of loading
            `config.model` (tests and benchmarks share one across apps).
    """
    if generator is None and not config.model:
        raise ValueError("ServeConfig.model is empty: give a model directory (or a loaded generator)")
    metrics = ServeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gen = generator if generator is not None else await asyncio.to_thread(load_generator, config)
        engine = BatchingEngine(
            gen,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            queue_size=config.queue_size,
            metrics=metrics,
        )
        app.state.generator = gen
        app.state.default_params = gen.default_params
        app.state.model_name = config.model_name or gen.model_name
        app.state.started = int(time.time())
        engine.start()
        app.state.engine = engine
        logger.info("serving %s: %s", app.state.model_name, config.to_dict())
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
        summary="Text generation with continuous batching; the seed's API and OpenAI's /v1/completions.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.metrics = metrics
    app.state.engine = None
    app.include_router(legacy.router)
    app.include_router(openai.router)
    chat.install(app, config)  # /v1/chat/completions and the chat template

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus text: requests, queue depth, batch sizes, tokens/s, latency histograms."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.exception_handler(ClientDisconnected)
    async def _client_gone(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    app.add_middleware(_CountRequests, metrics=metrics)
    app.add_middleware(FormBodyAsJSON)
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
            route = scope.get("route")
            # the template, not the raw path: a fuzzer must not create one series per URL
            name = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(name, str(status)).inc()
