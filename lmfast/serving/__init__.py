"""`lmfast serve`: a FastAPI app with continuous batching, the legacy /generated_texts/ API and OpenAI's /v1/completions.

    from lmfast.serving import ServeConfig, create_app
    app = create_app(ServeConfig(model="data/exports/nietzsche"))   # the model loads at startup

Names resolve lazily: `import lmfast.serving` imports neither FastAPI nor torch.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

_LAZY = {
    "create_app": "lmfast.serving.app",
    "ServeConfig": "lmfast.serving.config",
    "BatchingEngine": "lmfast.serving.batching",
    "ServerThread": "lmfast.serving.testing",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
