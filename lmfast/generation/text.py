"""Text in and out of token ids with the `tokenizers` library only (no transformers, no torch).

Decoding is incremental (`DecodeStream`): a UTF-8 character split across tokens is emitted once
complete. Stop sequences are cut here too: text that could still become a stop sequence is held
back, so a stream never shows a piece of the stop text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

PROMPT_ENCODING_FILE = "prompt_encoding.json"
"""In a model dir trained by lmfast (hf/, and every export of it): how the training documents
began, `{"prefix_token_ids": [...]}` (the dataset's `prompt_prefix_token_ids`), so a prompt is
encoded the same way: those ids, then the text without the tokenizer's special tokens."""


def write_prompt_encoding(directory: Path, prefix_token_ids: list[int]) -> Path:
    """Record in DIRECTORY that prompts start with PREFIX_TOKEN_IDS (see `PROMPT_ENCODING_FILE`)."""
    path = Path(directory) / PROMPT_ENCODING_FILE
    record = {"prefix_token_ids": [int(i) for i in prefix_token_ids], "add_special_tokens": False}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def read_prompt_prefix(directory: Path) -> list[int] | None:
    """The prompt prefix a model dir records, or None (not trained by lmfast: the tokenizer's own
    special tokens apply, as transformers encodes).

    Raises:
        ValueError: the file is there but is not a list of token ids (named in the message).
    """
    path = Path(directory) / PROMPT_ENCODING_FILE
    if not path.is_file():
        return None
    try:
        prefix = json.loads(path.read_text(encoding="utf-8"))["prefix_token_ids"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f'{path}: expected {{"prefix_token_ids": [ids]}} ({error})') from None
    if not isinstance(prefix, list) or not all(isinstance(i, int) and i >= 0 for i in prefix):
        raise ValueError(f"{path}: prefix_token_ids must be a list of token ids, got {prefix!r}")
    return prefix


class TextCodec:
    """The tokenizer of a model dir (`tokenizer.json`, as `save_pretrained` writes it).

    `prefix_ids` (from the dir's `prompt_encoding.json`): prompts are those ids followed by the text
    encoded without special tokens, as lmfast's training documents were; None: the tokenizer's
    own special tokens (its post-processor), as transformers encodes.
    """

    def __init__(self, tokenizer: Tokenizer, prefix_ids: list[int] | None = None) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.prefix_ids = prefix_ids

    @classmethod
    def load(cls, directory: Path) -> TextCodec:
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing (a fast tokenizer saved with save_pretrained is needed)"
            )
        return cls(Tokenizer.from_file(str(path)), read_prompt_prefix(directory))

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can decode; a model's (padded) vocabulary may be larger."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """A prompt's ids, begun the way the model's training documents were (see `prefix_ids`)."""
        if self.prefix_ids is None:
            return encode_ids(self.tokenizer, text)
        return [*self.prefix_ids, *encode_ids(self.tokenizer, text, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def banned_ids(self, words: list[str]) -> np.ndarray:
        """Every sub-token of each word, as written and after a space (GPT-2 BPE spells a word
        differently at the start of a text and after a space), like the legacy route's `ignored_words`."""
        variants = sorted({v for word in words for v in (word, word.strip(), " " + word.strip())})
        encodings = self.tokenizer.encode_batch(variants, add_special_tokens=False) if variants else []
        return np.array(sorted({t for encoding in encodings for t in encoding.ids}), dtype=np.int64)

    def stream(self, stop: list[str]) -> TextStream:
        return TextStream(self.tokenizer, stop)


def encode_ids(tokenizer: Tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """`tokenizer.encode(text).ids`, through `encode_batch`, which releases the GIL: `encode` holds
    it for the whole call, so a long prompt tokenized in a worker thread stalled every other thread
    (the server's event loop and decoding thread: 290 ms for 20,000 words)."""
    return tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids


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
