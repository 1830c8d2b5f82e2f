"""`lmfast serve`: a FastAPI app with continuous batching, the seed's API and OpenAI's /v1/completions.

    from lmfast.serving import ServeConfig, create_app
    app = create_app(ServeConfig(model="data/exports/nietzsche"))   # the model loads at startup

Names resolve lazily: `import lmfast.serving` imports neither FastAPI nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_app": "lmfast.serving.app",
    "ServeConfig": "lmfast.serving.config",
    "BatchingEngine": "lmfast.serving.batching",
    "ServerThread": "lmfast.serving.testing",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmfast.serving' has no attribute {name!r}")
