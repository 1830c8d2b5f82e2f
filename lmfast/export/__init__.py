"""Export a trained causal LM for fast inference: `lmfast export onnx SOURCE --output DIR`.

Names resolve lazily: importing this package pulls in neither torch nor onnx.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

_LAZY = {"ExportConfig": "lmfast.export.config", "export_onnx": "lmfast.export.onnx"}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
