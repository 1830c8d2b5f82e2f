"""Lazy public names for packages whose modules import heavy libraries (torch, onnxruntime, aiogram).

`import lmfast.train` must stay instant (the CLI's `--help`, the bot, the server without torch), so
each package lists `name -> defining module` and resolves a name on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` that imports `names[name]` when `name` is first used."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
