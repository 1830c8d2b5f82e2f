"""The dataset directory format (docs/architecture.md §1): `description.json` and the memory-mapped reader.

Written by `lmfast prepare` (and `prepare merge`), read by training, eval and users: this module is
the one reader and writer of `description.json` (`DatasetDescription`) and of the split arrays, so
no stage imports another for the format.

Opening a `PreparedDataset` checks what is cheap (description.json's shape, each `.npy` header
and size against the description, the first and last start position), so a damaged directory is
one clear `DatasetFormatError` instead of a traceback or a 256 TB allocation later.
`PreparedDataset.verify()` is the full check (every id below `vocab_size`, start positions
strictly increasing, the tokenizer loads): training calls it once before it starts.

Worker processes of a DataLoader can hold a `PreparedDataset` cheaply: only the file paths
are pickled and each process maps the arrays itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmfast.flags import UserError

DESCRIPTION_FILE = "description.json"
Split = Literal["train", "valid"]
SPLITS: tuple[Split, ...] = ("train", "valid")
TOKEN_DTYPES = ("uint16", "int32")


def split_key(split: str, what: str) -> str:
    """The description key of a per-split count: `number_of_<split>_<what>` (samples, tokens, ...)."""
    return f"number_of_{split}_{what}"


# description.json keys every dataset has, with their types (bool is not an int here)
REQUIRED_KEYS: dict[str, type] = {
    "vocab_size": int,
    "token_dtype": str,
    **{split_key(split, what): int for split in SPLITS for what in ("samples", "tokens")},
}
_SCAN_ITEMS = 1 << 24  # verify() reads the corpus this many ids at a time
LOSS_MASK_FILE = "loss_mask.npy"  # dialog datasets: uint8, 1 on the tokens trained on (lmfast.data.dialogs)


class DatasetFormatError(UserError):
    """The directory is not a usable dataset written by `lmfast prepare`; says which file and why."""


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # bad magic/header, truncated, unreadable
        raise DatasetFormatError(f"{path}: not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 1:
        raise DatasetFormatError(f"{path}: expected a 1-D array")
    return array


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
        self._corpus = _load_npy(self.directory / "corpus.npy")
        self._starts = _load_npy(self.directory / "sample_start_positions.npy")
        if (self.directory / LOSS_MASK_FILE).is_file():
            self._loss_mask = _load_npy(self.directory / LOSS_MASK_FILE)
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

    def check(self, token_dtype: str, samples: int, tokens: int) -> None:
        """The cheap check: dtypes, lengths against the description, first and last start.

        Raises:
            DatasetFormatError: naming the file and what is wrong.
        """
        corpus, starts = self.corpus, self.starts
        where = self.directory
        if corpus.dtype != np.dtype(token_dtype):
            raise DatasetFormatError(
                f"{where}/corpus.npy: dtype {corpus.dtype}, description says {token_dtype}"
            )
        if starts.dtype != np.int64:
            raise DatasetFormatError(
                f"{where}/sample_start_positions.npy: dtype {starts.dtype}, expected int64"
            )
        if len(corpus) != tokens or len(starts) != samples:
            raise DatasetFormatError(
                f"{where}: {len(starts)} samples and {len(corpus)} tokens on disk, "
                f"description.json says {samples} and {tokens} (truncated or mismatched files)"
            )
        if samples and (int(starts[0]) != 0 or not 0 <= int(starts[-1]) < len(corpus)):
            raise DatasetFormatError(
                f"{where}/sample_start_positions.npy: start positions must begin at 0 and stay below "
                f"the corpus length {len(corpus)} (first {int(starts[0])}, last {int(starts[-1])})"
            )

    def verify(self, vocab_size: int) -> None:
        """The full check: start positions strictly increasing, every id in [0, vocab_size).

        Raises:
            DatasetFormatError: the first problem found, with its position.
        """
        starts = self.starts
        for lo in range(0, len(starts), _SCAN_ITEMS):
            block = np.asarray(starts[lo : lo + _SCAN_ITEMS + 1])
            bad = np.flatnonzero(np.diff(block) <= 0)
            if len(bad):
                raise DatasetFormatError(
                    f"{self.directory}/sample_start_positions.npy: not strictly increasing at sample "
                    f"{lo + int(bad[0]) + 1}"
                )
        corpus = self.corpus
        for lo in range(0, len(corpus), _SCAN_ITEMS):
            block = np.asarray(corpus[lo : lo + _SCAN_ITEMS])
            if block.size and (int(block.max()) >= vocab_size or int(block.min()) < 0):
                position = lo + int(np.flatnonzero((block >= vocab_size) | (block < 0))[0])
                raise DatasetFormatError(
                    f"{self.directory}/corpus.npy: token id {int(corpus[position])} at position {position} "
                    f"is outside the vocabulary (vocab_size {vocab_size})"
                )

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


class DatasetDescription(dict[str, Any]):
    """`description.json`: a JSON object, read and written here only.

    It stays a dict (every key a run records: its flags, counts, tokenizer and boundary facts, chat
    keys) so files of every lmfast version read; the keys every stage relies on have typed
    accessors, and `read` checks them.
    """

    @classmethod
    def read(cls, path: str | Path) -> DatasetDescription:
        """Read and check description.json (a file or the dataset directory holding it).

        Raises:
            DatasetFormatError: missing, not JSON, or a required key missing or of the wrong type.
        """
        path = Path(path)
        if path.is_dir():
            path = path / DESCRIPTION_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetFormatError(f"{path}: missing (not an lmfast dataset directory)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetFormatError(f"{path}: invalid JSON ({error})") from None
        if not isinstance(values, dict):
            raise DatasetFormatError(f"{path}: expected a JSON object, got {type(values).__name__}")
        for key, kind in REQUIRED_KEYS.items():
            value = values.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DatasetFormatError(f"{path}: {key!r} must be {kind.__name__}, got {value!r}")
            if kind is int and value < 0:
                raise DatasetFormatError(f"{path}: {key!r} must be >= 0, got {value}")
        if values["vocab_size"] < 1:
            raise DatasetFormatError(f"{path}: 'vocab_size' must be positive")
        if values["token_dtype"] not in TOKEN_DTYPES:
            raise DatasetFormatError(f"{path}: 'token_dtype' must be one of {TOKEN_DTYPES}")
        return cls(values)

    def write(self, directory: str | Path) -> Path:
        """Write DIRECTORY/description.json (indented, one key a line, as every version wrote it)."""
        path = Path(directory) / DESCRIPTION_FILE
        path.write_text(json.dumps(self, indent=2) + "\n", encoding="utf-8")
        return path

    def set_counts(self, split: str, counts: Mapping[str, int]) -> None:
        """Record a split's counts under their `number_of_<split>_<what>` keys."""
        for what, value in counts.items():
            self[split_key(split, what)] = value

    def count(self, split: str, what: str) -> int:
        """A split's count (samples, tokens, documents, ...); 0 where this dataset does not record it."""
        return int(self.get(split_key(split, what)) or 0)

    @property
    def vocab_size(self) -> int:
        return int(self["vocab_size"])

    @property
    def token_dtype(self) -> str:
        return str(self["token_dtype"])

    @property
    def is_dialog(self) -> bool:
        """Conversations (dialogs, chat exports): the splits carry `loss_mask.npy`."""
        return "loss_mask_file" in self

    @property
    def prompt_prefix_token_ids(self) -> list[int] | None:
        """The ids inference prepends to a prompt (None in datasets older than the key)."""
        ids = self.get("prompt_prefix_token_ids")
        return [int(i) for i in ids] if isinstance(ids, list) else None


class PreparedDataset:
    """A dataset directory `<datasets_root>/<name>/<N>/` with its description and both splits.

    Raises:
        DatasetFormatError: on open, when the cheap checks fail (see the module docstring).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        description_path = self.directory / DESCRIPTION_FILE
        if not description_path.is_file():
            raise DatasetFormatError(
                f"{self.directory}: no description.json (not an lmfast dataset directory)"
            )
        self.description = DatasetDescription.read(description_path)
        self.train = PreparedSplit(self.directory / "train")
        self.valid = PreparedSplit(self.directory / "valid")
        for name in SPLITS:
            self.split(name).check(
                self.description.token_dtype,
                self.description.count(name, "samples"),
                self.description.count(name, "tokens"),
            )

    def verify(self) -> PreparedDataset:
        """The full check, once before training: ids, start positions, the tokenizer. Returns self.

        Reads the whole corpus (about 1 s per GB), never holding more than a block of it.

        Raises:
            DatasetFormatError: the first problem found, naming the file.
        """
        vocab_size = self.description.vocab_size
        self._verify_tokenizer(vocab_size)
        for name in SPLITS:
            self.split(name).verify(vocab_size)
        return self

    def _verify_tokenizer(self, vocab_size: int) -> None:
        from tokenizers import Tokenizer

        path = self.directory / "tokenizer" / "tokenizer.json"
        if not path.is_file():
            raise DatasetFormatError(f"{path}: missing (the dataset's tokenizer)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DatasetFormatError(f"{path}: not a Hugging Face tokenizer.json ({first_line})") from None
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size > vocab_size:
            raise DatasetFormatError(
                f"{path}: {size} tokens, but description.json says vocab_size {vocab_size}"
            )

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
