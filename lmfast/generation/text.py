"""Text in and out of token ids with the `tokenizers` library only (no transformers, no torch).

Decoding is incremental (`DecodeStream`): a UTF-8 character split across tokens is emitted once
complete. Stop sequences are cut here too: text that could still become a stop sequence is held
back, so a stream never shows a piece of the stop text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class TextCodec:
    """The tokenizer of a model dir (`tokenizer.json`, as `save_pretrained` writes it)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, directory: Path) -> TextCodec:
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing (a fast tokenizer saved with save_pretrained is needed)"
            )
        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can decode; a model's (padded) vocabulary may be larger."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def banned_ids(self, words: list[str]) -> np.ndarray:
        """Every sub-token of each word, as written and after a space (GPT-2 BPE spells a word
        differently at the start of a text and after a space), like the seed's `ignored_words`."""
        ids: set[int] = set()
        for word in words:
            for variant in {word, word.strip(), " " + word.strip()}:
                ids.update(self.tokenizer.encode(variant, add_special_tokens=False).ids)
        return np.array(sorted(ids), dtype=np.int64)

    def stream(self, stop: list[str]) -> TextStream:
        return TextStream(self.tokenizer, stop)


class TextStream:
    """One row's generated text, fed a token at a time."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self._tokenizer = tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self.text = ""  # decoded so far (may run past a stop sequence until `push` notices)
        self.emitted = 0  # characters of `text` already handed out

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (new text safe to show, whether a stop sequence was reached)."""
        piece = self._decoder.step(self._tokenizer, token_id)
        if piece:
            self.text += piece
        if not self._stop:
            return self._take(len(self.text)), False
        search_from = max(0, self.emitted - self._longest_stop)
        hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
        if hits:
            end = min(hits)
            out = self._take(end)
            self.text = self.text[:end]
            return out, True
        return self._take(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        """The text held back for a possible stop sequence, at the end of the row."""
        return self._take(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest suffix of `text` that starts some stop sequence."""
        for size in range(min(self._longest_stop - 1, len(self.text) - self.emitted), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0

    def _take(self, end: int) -> str:
        end = max(end, self.emitted)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out
