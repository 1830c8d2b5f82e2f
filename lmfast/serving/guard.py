"""ASGI guards in front of every route: JSON bodies only (415), and a body read deadline (408).

Only `application/json` (or `+json`) bodies are accepted on POST. A browser sends
`application/x-www-form-urlencoded`, `multipart/form-data` and `text/plain` cross-site without a
CORS preflight, so accepting them (or no content type) would let any web page drive a server on
127.0.0.1. A body that does not arrive whole within `body_timeout_s` (a slow client, or one that
sent less than its Content-Length) is answered 408 and the connection closed. Both are pure ASGI
middleware: streaming responses pass untouched.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmfast.serving.metrics import ServeMetrics

_BODY_METHODS = {"POST", "PUT", "PATCH"}


def is_json(content_type: bytes | None) -> bool:
    """`application/json`, `application/json; charset=utf-8`, `application/merge-patch+json`..."""
    if content_type is None:
        return False
    media = content_type.split(b";")[0].strip().lower()
    kind, _, subtype = media.partition(b"/")
    return kind == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))


class RequireJSON:
    """415 for a POST whose Content-Type is not JSON, before its body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            content_type = next((v for n, v in scope["headers"] if n == b"content-type"), None)
            if not is_json(content_type):
                response = JSONResponse(
                    {"detail": "Content-Type must be application/json"},
                    status_code=415,
                    headers={"Accept": "application/json"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyDeadline:
    """Bound the time a request body may take to arrive; count clients that leave mid-body."""

    def __init__(self, app: ASGIApp, timeout_s: float, metrics: ServeMetrics | None = None) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False

        async def receive_in_time() -> Message:
            nonlocal deadline, complete
            if complete:  # the body is in: later receives wait for the disconnect, unbounded
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.timeout_s:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request" and not message.get("more_body", False):
                complete = True
            elif message["type"] == "http.disconnect":
                complete = True
                if self.metrics is not None:
                    self.metrics.rejected.labels("client_disconnected").inc()
            return message

        await self.app(scope, receive_in_time, send)
