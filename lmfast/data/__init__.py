"""lmfast.data: raw documents -> tokenized, memory-mapped dataset (`prepare`) and reading it back.

`prepare()` itself lives in `lmfast.data.prepare` (the submodule's name would shadow it here).
Public names resolve lazily, so `import lmfast.data.dataset` (training) does not load the
tokenizer engines, and nothing here imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PreparedDataset": "lmfast.data.dataset",
    "PreparedSplit": "lmfast.data.dataset",
    "PrepareConfig": "lmfast.data.prepare",
    "Tokenizer": "lmfast.data.tokenizers",
    "load_tokenizer": "lmfast.data.tokenizers",
    "register_tokenizer": "lmfast.data.tokenizers",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmfast.data' has no attribute {name!r}")
