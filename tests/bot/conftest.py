"""Fixtures for the bot tests: async tests run on asyncio through anyio's pytest plugin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmfast.bot.config import BotConfig

TOKEN = "123456:TEST-token_abc"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., BotConfig]:
    """A BotConfig for tests: a temporary SQLite file, short polls, fast retries."""

    def make(**overrides: Any) -> BotConfig:
        values: dict[str, Any] = {
            "token": TOKEN,
            "db_path": str(tmp_path / "bot.sqlite3"),
            "polling_timeout": 2,
            "api_timeout_s": 10.0,
            "api_retries": 2,
            "api_backoff_s": 0.05,
        }
        values.update(overrides)
        return BotConfig(**values)

    return make
