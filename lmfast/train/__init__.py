"""Training stage: `train(TrainConfig) -> experiment dir` with PyTorch Lightning (docs/architecture.md §2).

Public names resolve lazily so `import lmfast.train` does not import torch.
"""

from __future__ import annotations

from lmfast._lazy import lazy_getattr

_LAZY = {
    "TrainConfig": "lmfast.train.config",
    "train": "lmfast.train.run",
    "LMModule": "lmfast.train.module",
    "LMDataModule": "lmfast.train.datamodule",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
