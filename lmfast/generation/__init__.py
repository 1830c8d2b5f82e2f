"""Text generation: one KV-cached decode loop (`DecodeSession`) on a torch or ONNX Runtime backend.

    from lmfast.generation import Generator, GenerationParams
    gen = Generator.load("data/exports/nietzsche")
    gen(["Truth is"], max_new_tokens=64, temperature=0.7)

Names resolve lazily, so `import lmfast.generation` pulls in neither torch nor onnxruntime.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

_LAZY = {
    "Generator": "lmfast.generation.generator",
    "GenerationParams": "lmfast.generation.params",
    "DecodeSession": "lmfast.generation.session",
    "TokenEvent": "lmfast.generation.session",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
