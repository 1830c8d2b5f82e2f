"""lmfast: raw text -> tokenized dataset -> trained GPT -> ONNX export -> HTTP API and Telegram bot.

`import lmfast` stays light (no torch): public names are resolved on first use.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it, imported only when the name is first used
_LAZY = {
    "Generator": "lmfast.generation",
    "GenerationParams": "lmfast.generation.params",
    "PreparedDataset": "lmfast.models.dataset",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
