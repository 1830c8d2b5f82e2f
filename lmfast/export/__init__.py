"""Export a trained causal LM for fast inference: `lmfast export onnx SOURCE --output DIR`.

Names resolve lazily: importing this package pulls in neither torch nor onnx.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ExportConfig": "lmfast.export.config", "export_onnx": "lmfast.export.onnx"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmfast.export' has no attribute {name!r}")
