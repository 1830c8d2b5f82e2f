"""The cache of an in-place ONNX export (`--kv_cache inplace`): buffers the graph writes into.

One preallocated NumPy buffer per layer's keys and per layer's values, (S, n_kv_head, capacity,
head_dim): S slots, each holding one row's tokens from column 0 (`lengths` says how many, `slots`
which slot each row of the batch holds). ONNX Runtime binds each buffer as both the past input and
the present output of its layer (lmfast.export.decoder.BufferAttention), so a decode step writes
one column per row and copies nothing else. Rows take and give back slots: a row that leaves frees
its slot and copies nothing; a row that joins is copied into a free slot (its own columns, nobody
else's). The buffers are copied whole only when they run out of slots or a row outgrows the
capacity, both of which grow geometrically, so the cost per token is bounded; and when so few rows
are left that most of the slots a step runs over are free (`compacted`), the last rows move down.

The buffers may also be torch tensors (the torch backend's in-place cache, on the CPU or a GPU):
every operation here is slicing and indexing both libraries share, and new buffers are made like
the old ones (`_allocated`), in the same library, dtype and device (zeroed, for torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

CAPACITY_STEP = 256
"""Capacities are multiples of this many tokens."""
GROWTH = 1.5
"""A full buffer is replaced by one at least this many times larger (in capacity or in slots)."""
COMPACT_SLACK = 4
"""Free slots below the highest one in use tolerated beyond as many as rows in use."""


@dataclass
class SlotCache:
    buffers: list[Any]
    """2 * n_layer arrays (NumPy, or torch tensors) (S, n_kv_head, capacity, head_dim): key, value per layer. Never resized:
    more slots or capacity make a new list (rows joining or leaving keep it), so a backend may keep
    them bound between steps while it is the same list object."""
    lengths: np.ndarray
    """(B,) int64: the tokens each row holds (columns beyond are stale and never read)."""
    slots: np.ndarray | None = None
    """(B,) int64: the slot (index along the buffers' first axis) of each row; None: row i in slot i."""

    def __post_init__(self) -> None:
        if self.slots is None:
            self.slots = np.arange(len(self.lengths), dtype=np.int64)

    @property
    def capacity(self) -> int:
        return int(self.buffers[0].shape[2])

    @property
    def num_slots(self) -> int:
        return int(self.buffers[0].shape[0])

    @property
    def span(self) -> int:
        """Slots a step runs over: up to the highest one in use (free ones below it included)."""
        return int(self.slots.max(initial=-1)) + 1

    @classmethod
    def empty(
        cls,
        batch: int,
        layers: int,
        num_kv_heads: int,
        head_dim: int,
        tokens: int,
        dtype: np.dtype | None = None,
        allocate: Callable[[tuple[int, ...]], Any] | None = None,
    ) -> SlotCache:
        """Buffers for `batch` empty rows with room for at least `tokens` each: NumPy arrays of
        `dtype`, or what `allocate(shape)` makes (e.g. torch tensors on a device)."""
        shape = (batch, num_kv_heads, _rounded(tokens), head_dim)
        if allocate is None:
            allocate = lambda shape: np.empty(shape, dtype=dtype)  # noqa: E731
        return cls([allocate(shape) for _ in range(2 * layers)], np.zeros(batch, np.int64))

    def fit(self, tokens: int) -> SlotCache:
        """This cache if every row has room for `tokens`, else a larger copy (same slots)."""
        if tokens <= self.capacity:
            return self
        capacity = _rounded(max(tokens, int(self.capacity * GROWTH)))
        held = int(self.lengths.max(initial=0))
        span = self.span
        buffers = []
        for old in self.buffers:
            new = _allocated(old, (old.shape[0], old.shape[1], capacity, old.shape[3]))
            new[:span, :, :held] = old[:span, :, :held]
            buffers.append(new)
        return SlotCache(buffers, self.lengths, self.slots)

    def select(self, rows: np.ndarray) -> SlotCache:
        """Keep (or repeat) the given rows, in order. Keeping rows copies nothing (the others' slots
        are freed); repeating one (num_return_sequences) copies the rows into new buffers."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(np.unique(rows)) != len(rows):
            slots = self.slots[rows]
            return SlotCache([b[slots] for b in self.buffers], self.lengths[rows])  # fancy indexing copies
        return SlotCache(self.buffers, self.lengths[rows], self.slots[rows]).compacted()

    def merge(self, other: SlotCache) -> SlotCache:
        """This cache's rows, then `other`'s: copied into free slots of these buffers when there
        are enough and room, else everyone into new buffers with more slots and capacity."""
        need = len(other.lengths)
        second = int(other.lengths.max(initial=0))
        free = np.setdiff1d(np.arange(self.num_slots), self.slots)[:need]
        if len(free) == need and second <= self.capacity:
            for mine, theirs in zip(self.buffers, other.buffers, strict=True):
                mine[free, :, :second] = theirs[other.slots, :, :second]
            return SlotCache(
                self.buffers,
                np.concatenate([self.lengths, other.lengths]),
                np.concatenate([self.slots, free]),
            )
        rows = len(self.lengths)
        total = rows + need
        slot_count = max(total, int(np.ceil(self.num_slots * GROWTH)))
        capacity = max(self.capacity, other.capacity)
        first = int(self.lengths.max(initial=0))
        buffers = []
        for a, b in zip(self.buffers, other.buffers, strict=True):
            merged = _allocated(a, (slot_count, a.shape[1], capacity, a.shape[3]))
            merged[:rows, :, :first] = a[self.slots, :, :first]
            merged[rows:total, :, :second] = b[other.slots, :, :second]
            buffers.append(merged)
        return SlotCache(buffers, np.concatenate([self.lengths, other.lengths]))

    def compacted(self) -> SlotCache:
        """The same rows, the highest ones moved into free lower slots when more than half of the
        slots a step runs over would be free (a step computes every slot up to the highest)."""
        rows = len(self.lengths)
        if self.span <= 2 * rows + COMPACT_SLACK:
            return self
        slots = self.slots.copy()
        free = np.setdiff1d(np.arange(rows), slots)  # below `rows`: where the high ones go
        movers = np.flatnonzero(slots >= rows)
        for row, target in zip(movers.tolist(), free.tolist(), strict=True):
            held = int(self.lengths[row])
            for buffer in self.buffers:
                buffer[target, :, :held] = buffer[slots[row], :, :held]
            slots[row] = target
        return SlotCache(self.buffers, self.lengths, slots)


def _allocated(like: Any, shape: tuple[int, ...]) -> Any:
    """A new buffer of `shape` like `like`: NumPy, uninitialized (ONNX Runtime reads only the held
    columns), or a torch tensor of the same dtype and device, zeroed: torch's attention multiplies
    masked columns by a weight of 0, and 0 * NaN from uninitialized memory would be NaN."""
    new_zeros = getattr(like, "new_zeros", None)
    return new_zeros(shape) if new_zeros is not None else np.empty(shape, dtype=like.dtype)


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
