"""Reading a prepared dataset back (DESIGN.md §1): memory-mapped, no copy of the corpus.

Worker processes of a DataLoader can hold a `PreparedDataset` cheaply: only the file paths
are pickled and each process maps the arrays itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "valid")
LOSS_MASK_FILE = "loss_mask.npy"  # dialog datasets: uint8, 1 on the tokens trained on (lmfast.data.dialogs)


class DatasetFormatError(ValueError):
    """The directory is not a dataset written by `lmfast prepare`."""


class PreparedSplit:
    """One split (`train/` or `valid/`): `len(split)` samples, `split[i]` -> 1-D int array."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        for name in ("corpus.npy", "sample_start_positions.npy"):
            if not (self.directory / name).is_file():
                raise DatasetFormatError(f"{self.directory}: missing {name} (not an lmfast dataset split)")
        self._corpus: np.ndarray | None = None
        self._starts: np.ndarray | None = None
        self._loss_mask: np.ndarray | None = None

    def _load(self) -> None:
        self._corpus = np.load(self.directory / "corpus.npy", mmap_mode="r")
        self._starts = np.load(self.directory / "sample_start_positions.npy", mmap_mode="r")
        if self._corpus.ndim != 1 or self._starts.ndim != 1:
            raise DatasetFormatError(f"{self.directory}: corpus and start positions must be 1-D arrays")
        if (self.directory / LOSS_MASK_FILE).is_file():
            self._loss_mask = np.load(self.directory / LOSS_MASK_FILE, mmap_mode="r")
            if self._loss_mask.shape != self._corpus.shape:
                raise DatasetFormatError(
                    f"{self.directory}: {LOSS_MASK_FILE} has shape {self._loss_mask.shape}, corpus.npy {self._corpus.shape}"
                )

    @property
    def corpus(self) -> np.ndarray:
        """All samples' token ids concatenated (uint16 or int32, memory-mapped)."""
        if self._corpus is None:
            self._load()
        return self._corpus  # type: ignore[return-value]

    @property
    def starts(self) -> np.ndarray:
        """int64 offset of each sample in `corpus`."""
        if self._starts is None:
            self._load()
        return self._starts  # type: ignore[return-value]

    @property
    def loss_mask(self) -> np.ndarray | None:
        """uint8 per corpus token, 1 where it is trained on (dialog datasets), or None: every token is."""
        if self._corpus is None:
            self._load()
        return self._loss_mask

    def sample_loss_mask(self, i: int) -> np.ndarray | None:
        """The loss mask of sample i (aligned with `split[i]`), or None where the split has none."""
        if self.loss_mask is None:
            return None
        start, end = self.bounds(i)
        return self.loss_mask[start:end]

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def bounds(self, i: int) -> tuple[int, int]:
        """[start, end) of sample i in the corpus."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        start = int(self.starts[i])
        end = int(self.starts[i + 1]) if i + 1 < n else int(self.corpus.shape[0])
        return start, end

    def __getitem__(self, i: int) -> np.ndarray:
        start, end = self.bounds(i)
        return self.corpus[start:end]

    def lengths(self) -> np.ndarray:
        """Length of every sample (int64), computed from the start positions."""
        starts = np.asarray(self.starts, dtype=np.int64)
        return np.diff(starts, append=np.int64(self.corpus.shape[0]))

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are not pickled: each DataLoader worker maps the files itself
        return {"directory": self.directory, "_corpus": None, "_starts": None, "_loss_mask": None}


class PreparedDataset:
    """A dataset directory `<datasets_root>/<name>/<N>/` with its description and both splits."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        description_path = self.directory / "description.json"
        if not description_path.is_file():
            raise DatasetFormatError(
                f"{self.directory}: no description.json (not an lmfast dataset directory)"
            )
        try:
            self.description: dict[str, Any] = json.loads(description_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{description_path}: invalid JSON ({error})") from None
        self.train = PreparedSplit(self.directory / "train")
        self.valid = PreparedSplit(self.directory / "valid")

    def split(self, name: str) -> PreparedSplit:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.train[i]

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.directory)!r}, train={len(self.train)}, valid={len(self.valid)})"
