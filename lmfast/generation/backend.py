"""What a backend must do for the decode loop: one forward step and a few cache operations.

The loop (`DecodeSession`) owns batching, sampling and text; a backend only runs the model and
reshapes its key/value cache. A cache ("past") is a list of 2 * n_layer arrays (key, value per
layer), each (B, n_kv_head, T, head_dim), in the backend's own array type (torch or NumPy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

Past = Any


class Backend(Protocol):
    name: str

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Past | None,
        all_logits: bool = False,
    ) -> tuple[np.ndarray, Past]:
        """Run the model on new tokens.

        Args:
            input_ids: (B, T) int64 new tokens (left padded when rows differ in length).
            attention_mask: (B, P + T) int64, 1 for real tokens, 0 for padding, past columns first.
            position_ids: (B, T) int64, each row counting its own real tokens from 0.
            past: the cache of the P previous columns, or None for a fresh prompt (P = 0).
            all_logits: return the logits of every new position, (B, T, V), for prompt logprobs
                (the loop passes it only when True; a normal step computes the last one alone).

        Returns:
            (logits of the last position, (B, V) float32, or (B, T, V) with `all_logits`; the
            cache of all P + T columns).
        """
        ...

    def select(self, past: Past, rows: np.ndarray) -> Past:
        """Keep (or repeat) the given batch rows, in order."""
        ...

    def merge(self, first: Past, second: Past) -> Past:
        """Left-pad the shorter cache along time and stack `second`'s rows after `first`'s."""
        ...

    def trim(self, past: Past, columns: int) -> Past:
        """Drop the first `columns` time steps (padding no row attends to any more)."""
        ...

    def prefix(self, past: Past, row: int, first: int, length: int) -> Past:
        """A standalone copy (batch 1) of the first `length` cached tokens of batch row `row`, for
        the prefix cache; `first` is the row's first real column in the loop's left-padded layout
        (its attention mask)."""
        ...

    def extend_from(self, prefix: Past, length: int, room: int) -> Past:
        """A batch-1 cache holding the first `length` tokens of a `prefix` copy, which a forward
        may extend by `room` more tokens; the copy itself is never written."""
        ...


def left_pad_time(array: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad axis 2 (time) of a (B, H, T, D) array on the left to `length`."""
    missing = length - array.shape[2]
    if missing == 0:
        return array
    padded = np.zeros((*array.shape[:2], length, *array.shape[3:]), dtype=array.dtype)
    padded[:, :, missing:] = array
    return padded


class NumpyCacheOps:
    """Cache operations on NumPy arrays (the ONNX Runtime CPU backend)."""

    def select(self, past: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
        return [array[rows] for array in past]

    def merge(self, first: list[np.ndarray], second: list[np.ndarray]) -> list[np.ndarray]:
        length = max(first[0].shape[2], second[0].shape[2])
        return [
            np.concatenate([left_pad_time(a, length), left_pad_time(b, length)])
            for a, b in zip(first, second, strict=True)
        ]

    def trim(self, past: list[np.ndarray], columns: int) -> list[np.ndarray]:
        return [np.ascontiguousarray(array[:, :, columns:]) for array in past]

    def prefix(self, past: list[np.ndarray], row: int, first: int, length: int) -> list[np.ndarray]:
        return [np.ascontiguousarray(array[row : row + 1, :, first : first + length]) for array in past]

    def extend_from(self, prefix: list[np.ndarray], length: int, room: int) -> list[np.ndarray]:
        # a forward concatenates the new columns into new arrays: the copy is only read
        return [np.ascontiguousarray(array[:, :, :length]) for array in prefix]


def left_padded(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prefill batch of PROMPTS: input_ids, attention_mask and position_ids, each (B, T) int64.

    Rows are left padded to the longest (pad id 0, masked out), so every row's next token lands
    in the last column; a row's positions count its own tokens from 0 (0 under the padding).
    """
    length = max(len(ids) for ids in prompts)
    input_ids = np.zeros((len(prompts), length), dtype=np.int64)
    mask = np.zeros((len(prompts), length), dtype=np.int64)
    for i, ids in enumerate(prompts):
        input_ids[i, length - len(ids) :] = ids
        mask[i, length - len(ids) :] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return input_ids, mask, positions
