"""Fuzz the API from its own OpenAPI spec (schemathesis): no input may produce a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(generator: Any, tiny_model_dir: Path) -> Iterator[Any]:
    # a short timeout bounds the cost of generated bodies asking for thousands of tokens
    config = ServeConfig(model=str(tiny_model_dir), request_timeout_s=0.5, max_batch_size=16)
    app = create_app(config, generator=generator)
    with TestClient(app):  # runs the lifespan: the engine is up while schemathesis calls the app
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_crashes_the_server(case: Any) -> None:
    response = case.call()
    # 504 is the documented answer to a body asking for more work than the request timeout allows
    assert response.status_code < 500 or response.status_code == 504, (case.as_curl_command(), response.text)
