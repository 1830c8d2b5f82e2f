"""SentencePiece BPE with byte fallback (Llama 2, Mistral): a native engine and its plain reference.

Hugging Face `tokenizers` runs these tokenizers with no pre-tokenizer (Llama 2 as transformers
converts it) or Metaspace(split=False) (Mistral), so each document is one BPE "word": a heap
over the whole document and no word cache. That, not the byte fallback, is why `tokenizers`
and gigatoken are slow on them. Here the normalized document is cut into words where a cut
provably leaves the ids unchanged, each word is merged by rank (the same heap rules as
tokenizers' `Word::merge_all`), and each word's ids are cached:

- Metaspace(split=True) cuts before every "▁" itself.
- Otherwise the cut is before a "▁" that follows another character. A merge can only join
  two symbols across such a cut if its token holds a non-"▁" character followed by "▁";
  `SentencePieceBpe.from_tokenizer` checks every merge for that (SentencePiece-trained
  vocabularies, split by whitespace, never have one) and refuses the tokenizer otherwise.

- When no merge involves a `<0xXX>` byte token (SentencePiece never merges them), the cut is
  also before and after each character that has no token of its own (Llama 2's "\n").

Characters with no token become their UTF-8 bytes' `<0xXX>` tokens (all 256 are required, so
the unk token never occurs). Only this pipeline is accepted, read from tokenizer.json:

- normalizer Sequence[Prepend("▁"), Replace(" ", "▁")] and no pre-tokenizer, or no normalizer
  and Metaspace(replacement="▁", prepend_scheme=first|always|never, split);
- a BPE model with byte_fallback, no dropout, no subword prefix or suffix, ignore_merges off;
- only special added tokens (the plain-text reference encodes them as text).

`SentencePieceBpe.encode` is the plain Python reference of the native kernel
(`lmfast/data/_spbpe`, csrc/spbpe.h); tests/data/test_spbpe.py proves them equal to each other
and to `tokenizers`.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import operator
import os
import re
import threading
from dataclasses import dataclass

import numpy as np

from lmfast.data.tokenizers import Tokenizer

SPACE = "\u2581"
PREPEND_NEVER, PREPEND_NONEMPTY, PREPEND_UNLESS_LEADING_SPACE = 0, 1, 2
_LLAMA_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
    ],
}
_PREPEND_SCHEMES = {
    "first": PREPEND_UNLESS_LEADING_SPACE,
    "always": PREPEND_UNLESS_LEADING_SPACE,
    "never": PREPEND_NEVER,
}
# a non-space character followed by a space: a token holding this spans a word cut
_SPANS_CUT = re.compile(f"[^{SPACE}]{SPACE}")


def _pipeline(config: dict) -> tuple[int, bool]:
    """(prepend mode, cut before every space) of a supported normalizer + pre-tokenizer, else ValueError."""
    normalizer, pre = config.get("normalizer"), config.get("pre_tokenizer")
    if normalizer == _LLAMA_NORMALIZER and pre is None:
        return PREPEND_NONEMPTY, False
    if normalizer is None and isinstance(pre, dict) and pre.get("type") == "Metaspace":
        scheme = pre.get("prepend_scheme")
        if pre.get("replacement") != SPACE or scheme not in _PREPEND_SCHEMES:
            raise ValueError(f"Metaspace {pre} is not the SentencePiece one")
        return _PREPEND_SCHEMES[scheme], bool(pre.get("split"))
    raise ValueError(
        f"normalizer {json.dumps(normalizer)[:80]} with pre-tokenizer {json.dumps(pre)[:80]} "
        "is not SentencePiece's"
    )


def _state(component: object) -> dict | None:
    """A normalizer's or pre-tokenizer's tokenizer.json entry, read without serializing the vocabulary."""
    return None if component is None else json.loads(component.__getstate__())


def _merge_rows(merges: list, vocab: dict[str, int], cut_every_space: bool) -> np.ndarray:
    """(left, right, rank, new id) uint32 rows, one per pair, a later duplicate winning (as in tokenizers).

    Raises:
        ValueError: a merge's part or result is not in the vocabulary, or it spans a word cut.
    """
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    lefts, rights = [p[0] for p in pairs], [p[1] for p in pairs]
    merged = list(map(operator.add, lefts, rights))
    if not cut_every_space:
        spanning = next(
            (k for k, m in enumerate(merged) if m.find(SPACE, 1) > 0 and _SPANS_CUT.search(m)), None
        )
        if spanning is not None:
            raise ValueError(
                f"merge {lefts[spanning]!r} + {rights[spanning]!r} spans a word boundary before {SPACE!r}"
            )
    get, count = vocab.__getitem__, len(pairs)
    try:
        columns = [
            np.fromiter(map(get, part), dtype=np.uint32, count=count) for part in (lefts, rights, merged)
        ]
    except KeyError as missing:
        raise ValueError(f"merge part or result {missing.args[0]!r} is not in the vocabulary") from None
    left, right, new = columns
    keys = (left.astype(np.uint64) << np.uint64(32)) | right
    _, last_reversed = np.unique(keys[::-1], return_index=True)
    keep = np.sort(count - 1 - last_reversed)
    return np.stack([left[keep], right[keep], keep.astype(np.uint32), new[keep]], axis=1)


@dataclass(frozen=True, eq=False)
class SentencePieceBpe:
    """The tokenizer as the kernel needs it: ids of one-character tokens, byte tokens, merges."""

    char_ids: dict[str, int]
    byte_ids: tuple[int, ...]
    merge_rows: np.ndarray  # (left, right, rank, new id) uint32, one row per pair
    prepend: int
    cut_every_space: bool
    cut_around_bytes: bool  # no merge involves a byte token, so `<0xXX>` pieces never merge

    @functools.cached_property
    def merges(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(left, right) -> (rank, new id), for the plain reference."""
        return {(a, b): (rank, new) for a, b, rank, new in self.merge_rows.tolist()}

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> SentencePieceBpe:
        """Read tokenizer.json; ValueError (one line) when it is not SentencePiece BPE as described above.

        The pipeline and model type are checked first, from the backend's own objects, so other
        tokenizers are refused before their vocabulary is serialized and parsed.
        """
        from tokenizers import models

        backend = tokenizer.backend
        pipeline = {"normalizer": _state(backend.normalizer), "pre_tokenizer": _state(backend.pre_tokenizer)}
        prepend, cut_every_space = _pipeline(pipeline)
        if not isinstance(backend.model, models.BPE) or not backend.model.byte_fallback:
            raise ValueError("not a BPE model with byte_fallback")
        config = json.loads(tokenizer.json_text())
        model = config.get("model") or {}
        if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise ValueError("BPE dropout or subword prefix/suffix set")
        if model.get("ignore_merges"):
            raise ValueError("BPE ignore_merges set")
        if any(not token.get("special") for token in config.get("added_tokens") or ()):
            raise ValueError("non-special added tokens split the text")
        vocab: dict[str, int] = model["vocab"]
        try:
            byte_ids = tuple(vocab[f"<0x{b:02X}>"] for b in range(256))
        except KeyError as missing:
            raise ValueError(f"byte-fallback token {missing.args[0]} is missing") from None
        if SPACE not in vocab:
            raise ValueError(f"{SPACE!r} is not a token")
        rows = _merge_rows(model.get("merges") or [], vocab, cut_every_space)
        char_ids = {token: i for token, i in vocab.items() if len(token) == 1}
        cut_around_bytes = not np.isin(rows[:, [0, 1, 3]], np.array(byte_ids, dtype=np.uint32)).any()
        return cls(char_ids, byte_ids, rows, prepend, cut_every_space, cut_around_bytes)

    def normalize(self, text: str) -> str:
        if not text:
            return ""
        normalized = text.replace(" ", SPACE)
        if self.prepend == PREPEND_NONEMPTY or (
            self.prepend == PREPEND_UNLESS_LEADING_SPACE and not normalized.startswith(SPACE)
        ):
            normalized = SPACE + normalized
        return normalized

    def words(self, normalized: str) -> list[str]:
        """Cut before a space after a non-space (before every space with split=True), and around a
        character with no token when byte tokens never merge: no merge can span these cuts."""
        words: list[str] = []
        start, previous_space, previous_bytes = 0, False, False
        for i, char in enumerate(normalized):
            space = char == SPACE
            fallback = self.cut_around_bytes and char not in self.char_ids
            if i > start and (
                (space and (self.cut_every_space or not previous_space)) or fallback or previous_bytes
            ):
                words.append(normalized[start:i])
                start = i
            previous_space, previous_bytes = space, fallback
        if normalized[start:]:
            words.append(normalized[start:])
        return words

    def merge_word(self, word: str) -> list[int]:
        """tokenizers' `Word::merge_all`: pop the smallest (rank, position), skip stale entries."""
        symbols: list[int] = []
        for char in word:
            token = self.char_ids.get(char)
            symbols.extend([token] if token is not None else [self.byte_ids[b] for b in char.encode()])
        alive = [True] * len(symbols)
        prev = list(range(-1, len(symbols) - 1))
        nxt = [*range(1, len(symbols)), -1]
        queue = [
            (self.merges[pair][0], k, self.merges[pair][1])
            for k, pair in enumerate(itertools.pairwise(symbols))
            if pair in self.merges
        ]
        heapq.heapify(queue)
        while queue:
            _, k, new = heapq.heappop(queue)
            if not alive[k] or nxt[k] == -1:
                continue
            right = nxt[k]
            found = self.merges.get((symbols[k], symbols[right]))
            if found is None or found[1] != new:
                continue
            symbols[k], alive[right], nxt[k] = new, False, nxt[right]
            if nxt[k] != -1:
                prev[nxt[k]] = k
            for left_pos, right_pos in ((prev[k], k), (k, nxt[k])):
                if left_pos != -1 and right_pos != -1:
                    pair = (symbols[left_pos], symbols[right_pos])
                    if pair in self.merges:
                        heapq.heappush(queue, (self.merges[pair][0], left_pos, self.merges[pair][1]))
        return [s for s, a in zip(symbols, alive, strict=True) if a]

    def encode(self, text: str) -> list[int]:
        """The plain reference: ids of `text` (no special tokens added)."""
        return [i for word in self.words(self.normalize(text)) for i in self.merge_word(word)]


def native_kernel():
    """The compiled `_spbpe` module, or None when the extension was not built."""
    try:
        from lmfast.data import _spbpe
    except ImportError:
        return None
    return _spbpe


class SpbpeEngine:
    """The native kernel: its threads (one per range of pieces) share one word cache."""

    name = "spbpe"

    def __init__(
        self, tokenizer: Tokenizer, num_threads: int | None = None, cache_slots: int = 1 << 19
    ) -> None:
        """cache_slots: the most slots of the shared word cache (32 bytes each, a power of two)."""
        kernel = native_kernel()
        if kernel is None:
            raise ValueError("the native kernel lmfast.data._spbpe is not built")
        spec = SentencePieceBpe.from_tokenizer(tokenizer)
        self._kernel = kernel.Kernel(
            {ord(c): i for c, i in spec.char_ids.items()},
            spec.byte_ids,
            spec.merge_rows,
            spec.prepend,
            spec.cut_every_space,
            spec.cut_around_bytes,
            max(1, num_threads or os.cpu_count() or 1),
            cache_slots,
        )
        self._lock = threading.Lock()  # one encode at a time: the kernel's encoders are not re-entrant

    def encode(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.ascontiguousarray(flat, dtype=np.uint8)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if len(offsets) <= 1:
            return np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)
        with self._lock:
            return self._kernel.encode(flat, offsets)
