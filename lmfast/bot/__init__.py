"""The Telegram frontend (`lmfast bot`): aiogram 3 handlers in front of the lmfast HTTP API.

Speaks HTTP only, never imports torch. Names resolve lazily so that `import lmfast.bot` (and
`lmfast bot --help`) does not pay for aiogram.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

_LAZY = {
    "BotConfig": "lmfast.bot.config",
    "LmfastClient": "lmfast.bot.client",
    "Storage": "lmfast.bot.storage",
    "run": "lmfast.bot.app",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
