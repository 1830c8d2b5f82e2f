"""lmfast.data: raw documents -> tokenized, memory-mapped dataset (`prepare`) and reading it back.

`prepare()` itself lives in `lmfast.data.prepare` (the submodule's name would shadow it here).
Public names resolve lazily, and nothing here imports torch. The reader (`PreparedDataset`) and
`description.json` (`DatasetDescription`) live in `lmfast.models.dataset`, the format every stage
reads, so training does not load the tokenizer engines.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

_LAZY = {
    "PreparedDataset": "lmfast.models.dataset",
    "PreparedSplit": "lmfast.models.dataset",
    "PrepareConfig": "lmfast.data.prepare",
    "Tokenizer": "lmfast.data.tokenizers",
    "load_tokenizer": "lmfast.data.tokenizers",
    "register_tokenizer": "lmfast.data.tokenizers",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
