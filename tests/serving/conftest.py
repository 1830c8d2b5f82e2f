"""Serving fixtures: one real tiny generator shared by every app of the session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig


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
