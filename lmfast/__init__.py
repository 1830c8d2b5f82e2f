"""lmfast: raw text -> tokenized dataset -> trained GPT -> ONNX export -> HTTP API and Telegram bot.

`import lmfast` stays light (no torch): public names are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it, imported only when the name is first used
_LAZY = {
    "Generator": "lmfast.generation",
    "GenerationParams": "lmfast.generation.params",
    "PreparedDataset": "lmfast.data.dataset",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmfast' has no attribute {name!r}")
