"""Accept JSON bodies sent without a JSON content type.

`curl URL -d '{...}'` (the seed's README example) labels its body
`application/x-www-form-urlencoded`, and FastAPI then refuses to read it as JSON (422). Every
lmfast endpoint that takes a body takes JSON, so a form-labelled body is relabelled as JSON;
whether it really is JSON is then checked by the route's validation, as for any other body.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

_FORM = b"application/x-www-form-urlencoded"


class FormBodyAsJSON:
    """Pure ASGI middleware (no per-request copy of the body, streaming responses untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = scope["headers"]
            if any(name == b"content-type" and value.split(b";")[0].strip() == _FORM for name, value in headers):
                relabelled = [(n, v) for n, v in headers if n != b"content-type"]
                relabelled.append((b"content-type", b"application/json"))
                scope = {**scope, "headers": relabelled}
        await self.app(scope, receive, send)
