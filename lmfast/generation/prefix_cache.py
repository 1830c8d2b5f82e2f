"""The prefix cache: keys and values already computed, kept for the requests that start the same way.

A chat client resends the whole conversation every turn, so turn 8's prompt begins with turn 7's
prompt and reply. The session keeps, in a pool bounded in bytes, the cache of every prompt it
prefilled and of every sequence that finished normally (prompt plus reply), each as a standalone
copy that no running row writes into. A new prompt is matched against the pool; the longest common
prefix is copied into the new request's cache and only the rest is prefilled. vLLM (automatic
prefix caching over block hashes), SGLang (a radix tree) and llama-server (`cache_prompt`, one
cache per slot) do the same; here an entry is a whole sequence, matched token by token, and the
least recently used entries are evicted first. An entry that is a prefix of a newer one is
replaced by it, so a conversation holds one entry, its latest turn. Entries are filed by their
first `min_reuse_tokens` tokens, which any reusable match shares, so a lookup compares a prompt
only with the entries that start like it, however many the pool holds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Past = Any

MIN_REUSE_TOKENS = 8
"""A shorter common prefix is prefilled again: copying it would save less than it costs."""


def past_nbytes(past: Past) -> int:
    """Bytes held by a cache: a list of NumPy arrays or torch tensors."""
    total = 0
    for array in past:
        nbytes = getattr(array, "nbytes", None)
        total += int(nbytes) if nbytes is not None else int(array.numel() * array.element_size())
    return total


@dataclass
class _Entry:
    tokens: np.ndarray
    """(L,) int64: the sequence whose keys and values `past` holds, one column per token."""
    past: Past
    nbytes: int


@dataclass(frozen=True)
class PrefixCacheStats:
    """Totals since the cache was made (the server exports them as Prometheus metrics)."""

    lookups: int
    hits: int
    reused_tokens: int
    entries: int
    bytes: int


class PrefixCache:
    """Whole cached sequences, least recently used first out, within `capacity_bytes`."""

    def __init__(self, capacity_bytes: int, min_reuse_tokens: int = MIN_REUSE_TOKENS) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.min_reuse_tokens = max(1, min_reuse_tokens)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest use first
        self._by_start: dict[tuple[int, ...], set[int]] = {}  # first min_reuse_tokens ids -> keys
        self._next_key = 0
        self.bytes = 0
        self.lookups = 0
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self.lookups, self.hits, self.reused_tokens, len(self._entries), self.bytes)

    def lookup(self, prompt: Sequence[int]) -> tuple[Past, int] | None:
        """The cached sequence sharing the longest prefix with `prompt`, and how many tokens of it
        to reuse: at most len(prompt) - 1, since the prompt's last token must still be computed
        for the logits of the first new one. None below `min_reuse_tokens`."""
        self.lookups += 1
        if len(prompt) <= self.min_reuse_tokens or not self._entries:
            return None
        query = np.asarray(prompt, dtype=np.int64)
        best_key, best = -1, 0
        for key, entry in self._candidates(prompt):
            shared = _common_prefix(entry.tokens, query)
            if shared > best:
                best_key, best = key, shared
        best = min(best, len(query) - 1)
        if best < self.min_reuse_tokens:
            return None
        self._entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return self._entries[best_key].past, best

    def wants(self, tokens: Sequence[int], nbytes: int) -> bool:
        """Whether `add` would keep this sequence: not already held (as it is or inside a longer
        entry, which then counts as used) and not larger than the whole pool. Asked before the
        copy is made, so a sequence the pool would drop costs nothing."""
        if len(tokens) <= self.min_reuse_tokens or nbytes > self.capacity_bytes:
            return False
        query = np.asarray(tokens, dtype=np.int64)
        for key, entry in self._candidates(tokens):
            if len(entry.tokens) >= len(query) and _common_prefix(entry.tokens, query) == len(query):
                self._entries.move_to_end(key)
                return False
        return True

    def add(self, tokens: Sequence[int], past: Past) -> None:
        """Keep `past`, a standalone cache of exactly `tokens` (one column each, batch 1). Entries
        that are prefixes of it are dropped; then the least recently used until it fits."""
        nbytes = past_nbytes(past)
        if not self.wants(tokens, nbytes):
            return
        query = np.asarray(tokens, dtype=np.int64)
        covered = [
            key
            for key, entry in self._candidates(tokens)
            if len(entry.tokens) <= len(query) and _common_prefix(entry.tokens, query) == len(entry.tokens)
        ]
        for key in covered:
            self._remove(key)
        while self._entries and self.bytes + nbytes > self.capacity_bytes:
            self._remove(next(iter(self._entries)))
        self._entries[self._next_key] = _Entry(query, past, nbytes)
        self._by_start.setdefault(self._start(tokens), set()).add(self._next_key)
        self._next_key += 1
        self.bytes += nbytes

    def clear(self) -> None:
        for key in list(self._entries):
            self._remove(key)

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.nbytes
        start = self._start(entry.tokens.tolist())
        self._by_start[start].discard(key)
        if not self._by_start[start]:
            del self._by_start[start]

    def _start(self, tokens: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(t) for t in tokens[: self.min_reuse_tokens])

    def _candidates(self, tokens: Sequence[int]) -> list[tuple[int, _Entry]]:
        """The entries that start with the same `min_reuse_tokens` ids (every other one shares
        fewer: not reusable, and neither covering nor covered, since entries are longer)."""
        keys = self._by_start.get(self._start(tokens), ())
        return [(key, self._entries[key]) for key in sorted(keys)]


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two int64 arrays."""
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n
