"""The cache of an in-place ONNX export (`--kv_cache inplace`): buffers the graph writes into.

One preallocated NumPy buffer per layer's keys and per layer's values, (B, n_kv_head, capacity,
head_dim); a row's tokens fill its buffer from column 0, `lengths` says how many. ONNX Runtime
binds each buffer as both the past input and the present output of its layer
(lmfast.export.decoder.BufferAttention), so a decode step writes one column per row and copies
nothing else. The buffers are copied only when the batch changes (rows join or leave) or a row
outgrows the capacity, which grows geometrically, so its cost per token is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAPACITY_STEP = 256
"""Capacities are multiples of this many tokens."""
GROWTH = 1.5
"""A full buffer is replaced by one at least this many times larger."""


@dataclass
class SlotCache:
    buffers: list[np.ndarray]
    """2 * n_layer arrays (B, n_kv_head, capacity, head_dim): key, value per layer. Fixed when the
    cache is made (every change of rows or capacity makes a new SlotCache), so a backend may keep
    them bound between steps."""
    lengths: np.ndarray
    """(B,) int64: the tokens each row holds (columns beyond are stale and never read)."""

    @property
    def capacity(self) -> int:
        return int(self.buffers[0].shape[2])

    @classmethod
    def empty(
        cls, batch: int, layers: int, num_kv_heads: int, head_dim: int, tokens: int, dtype: np.dtype
    ) -> SlotCache:
        """Buffers for `batch` empty rows with room for at least `tokens` each."""
        shape = (batch, num_kv_heads, _rounded(tokens), head_dim)
        return cls([np.empty(shape, dtype=dtype) for _ in range(2 * layers)], np.zeros(batch, np.int64))

    def fit(self, tokens: int) -> SlotCache:
        """This cache if every row has room for `tokens`, else a larger copy."""
        if tokens <= self.capacity:
            return self
        capacity = _rounded(max(tokens, int(self.capacity * GROWTH)))
        held = int(self.lengths.max(initial=0))
        buffers = []
        for old in self.buffers:
            new = np.empty((*old.shape[:2], capacity, old.shape[3]), dtype=old.dtype)
            new[:, :, :held] = old[:, :, :held]
            buffers.append(new)
        return SlotCache(buffers, self.lengths)

    def select(self, rows: np.ndarray) -> SlotCache:
        """Keep (or repeat) the given rows, in order."""
        return SlotCache([np.ascontiguousarray(b[rows]) for b in self.buffers], self.lengths[rows])

    def merge(self, other: SlotCache) -> SlotCache:
        """This cache's rows, then `other`'s, in buffers as large as the larger of the two."""
        capacity = max(self.capacity, other.capacity)
        first, second = int(self.lengths.max(initial=0)), int(other.lengths.max(initial=0))
        rows = len(self.lengths)
        buffers = []
        for a, b in zip(self.buffers, other.buffers, strict=True):
            merged = np.empty((rows + b.shape[0], a.shape[1], capacity, a.shape[3]), dtype=a.dtype)
            merged[:rows, :, :first] = a[:, :, :first]
            merged[rows:, :, :second] = b[:, :, :second]
            buffers.append(merged)
        return SlotCache(buffers, np.concatenate([self.lengths, other.lengths]))


def _rounded(tokens: int) -> int:
    return max(CAPACITY_STEP, -(-tokens // CAPACITY_STEP) * CAPACITY_STEP)


def right_aligned(array: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B, T, ...) left-padded rows (row b's `counts[b]` real columns last) -> the same rows with
    their real columns first; the padding wraps around to the end."""
    T = array.shape[1]
    index = (np.arange(T)[None, :] + (T - counts)[:, None]) % T
    return np.take_along_axis(array, index.reshape(*index.shape, *[1] * (array.ndim - 2)), axis=1)


def left_aligned(array: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The inverse of `right_aligned`."""
    T = array.shape[1]
    index = (np.arange(T)[None, :] - (T - counts)[:, None]) % T
    return np.take_along_axis(array, index.reshape(*index.shape, *[1] * (array.ndim - 2)), axis=1)
