"""Training stage: `train(TrainConfig) -> experiment dir` with PyTorch Lightning (DESIGN.md §2).

Public names resolve lazily so `import lmfast.train` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "lmfast.train.config",
    "train": "lmfast.train.run",
    "LMModule": "lmfast.train.module",
    "LMDataModule": "lmfast.train.datamodule",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmfast.train' has no attribute {name!r}")
