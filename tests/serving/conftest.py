"""Serving fixtures: one real tiny generator shared by every app of the session."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread


@pytest.fixture(scope="session")
def generator(tiny_model_dir: Path) -> Any:
    """The tiny random GPT-2 loaded once (torch backend, 1 thread: tests share 2 cores)."""
    from lmfast.generation import Generator

    return Generator.load(tiny_model_dir, backend="torch", num_threads=1)


@pytest.fixture
def make_client(generator: Any, tiny_model_dir: Path) -> Callable[..., Any]:
    """`with make_client(max_batch_size=4) as client:` an in-process TestClient, lifespan included."""

    @contextmanager
    def factory(**overrides: Any) -> Iterator[TestClient]:
        config = ServeConfig(model=str(tiny_model_dir), **overrides)
        with TestClient(create_app(config, generator=generator)) as client:
            yield client

    return factory


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Iterator[TestClient]:
    with make_client() as client:
        yield client


@pytest.fixture(scope="session")
def make_server(generator: Any, tiny_model_dir: Path) -> Callable[..., ServerThread]:
    """`with make_server(max_batch_size=8) as server:` a real uvicorn on loopback serving the tiny
    model (`generator=` serves another, e.g. a poisoned one)."""

    def factory(generator: Any = generator, **overrides: Any) -> ServerThread:
        config = ServeConfig(model=str(tiny_model_dir), **overrides)
        return ServerThread(create_app(config, generator=generator))

    return factory


def metric(url: str, sample: str) -> float:
    """One sample of the server's Prometheus `/metrics` (0 when it is not there yet)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def wait_until_serving(process: subprocess.Popen, url: str, timeout_s: float = 120) -> None:
    """Wait for a `lmfast serve` subprocess to answer `/health_check/` (fails if it exits first)."""

    def ready() -> bool:
        assert process.poll() is None, process.stdout.read() if process.stdout else process.returncode
        try:
            return httpx.get(url + "/health_check/").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout_s)
