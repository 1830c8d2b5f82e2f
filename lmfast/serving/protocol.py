"""uvicorn's HTTP protocol with a deadline for request headers, so slowloris clients are dropped.

uvicorn closes a keep-alive connection that sends nothing for `timeout_keep_alive` seconds, but any
byte restarts that wait, so a client trickling one header byte every few seconds holds a
connection for ever (slowloris). Here a connection whose next request's headers are not complete
`header_timeout_s` after it opened (or after its last response) is closed. The body has its own
deadline in `guard.BodyDeadline`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from lmfast.serving.config import ServeConfig


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's default HTTP protocol class, closing connections whose headers come too slowly."""

    class HeaderDeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _expire(self) -> None:
            waiting_for_headers = self.cycle is None or self.cycle.response_complete
            if waiting_for_headers and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def server_options(config: ServeConfig) -> dict[str, Any]:
    """The uvicorn options `lmfast serve` runs with (`testing.ServerThread` takes the same)."""
    return {
        "http": header_timeout_protocol(config.header_timeout_s),
        "timeout_graceful_shutdown": int(config.request_timeout_s),
    }
