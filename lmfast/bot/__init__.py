"""The Telegram frontend (`lmfast bot`): aiogram 3 handlers in front of the lmfast HTTP API.

Speaks HTTP only, never imports torch. Names resolve lazily so that `import lmfast.bot` (and
`lmfast bot --help`) does not pay for aiogram.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BotConfig": "lmfast.bot.config",
    "LmfastClient": "lmfast.bot.client",
    "Storage": "lmfast.bot.storage",
    "run": "lmfast.bot.app",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmfast.bot' has no attribute {name!r}")
