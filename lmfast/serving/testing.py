"""Run a real uvicorn server in a background thread on a free loopback port.

For tests and benchmarks that need real HTTP (httpx, the `openai` client, the bot):

    with ServerThread(create_app(config, generator)) as server:
        httpx.get(server.url + "/health_check/")

The port is bound before uvicorn starts (no race for a "free" port), entering the context
waits on `GET /health_check/` answering 200 instead of sleeping, and an app from `create_app`
runs with `lmfast serve`'s uvicorn options (its header deadline among them).
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn


class ServerThread:
    """A uvicorn server on 127.0.0.1:<free port>, serving `app` from a daemon thread."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        ready_path: str = "/health_check/",
        startup_timeout_s: float = 60.0,
        **uvicorn_options: Any,
    ) -> None:
        self.app = app
        self.host = host
        self.ready_path = ready_path
        self.startup_timeout_s = startup_timeout_s
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        options = {"log_level": "warning", "lifespan": "on", **_server_options(app), **uvicorn_options}
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. http://127.0.0.1:54321."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        """Start serving and block until the readiness endpoint answers 200.

        Raises:
            RuntimeError: the server thread died (e.g. the model failed to load) or was not
                ready within `startup_timeout_s`.
        """
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if not self._thread.is_alive():
                    raise RuntimeError("the server thread exited during start-up (see its log)")
                if self.server.started:
                    try:
                        if client.get(self.url + self.ready_path).status_code == 200:
                            return self
                    except httpx.TransportError:
                        pass
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server not ready after {self.startup_timeout_s} s")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Graceful shutdown (running requests finish), then wait for the thread."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _server_options(app: Any) -> dict[str, Any]:
    """`lmfast serve`'s uvicorn options (header deadline...) for an app from `create_app`."""
    from lmfast.serving.protocol import server_options

    state = getattr(getattr(app, "state", None), "lmfast", None)
    return server_options(state.config) if state is not None else {}
