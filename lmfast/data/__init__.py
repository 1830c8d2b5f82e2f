"""lmfast.data: raw documents -> tokenized, memory-mapped dataset (`prepare`) and reading it back.

`prepare()` itself lives in `lmfast.data.prepare` (the submodule's name would shadow it here).
Public names resolve lazily, so `import lmfast.data.dataset` (training) does not load the
tokenizer engines, and nothing here imports torch.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

_LAZY = {
    "PreparedDataset": "lmfast.data.dataset",
    "PreparedSplit": "lmfast.data.dataset",
    "PrepareConfig": "lmfast.data.prepare",
    "Tokenizer": "lmfast.data.tokenizers",
    "load_tokenizer": "lmfast.data.tokenizers",
    "register_tokenizer": "lmfast.data.tokenizers",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
