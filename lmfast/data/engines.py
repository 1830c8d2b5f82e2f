"""Tokenizer engines: the same ids as the Hugging Face reference, at very different speeds.

`prepare` spends its time here. Engines, fastest first:

- `spbpe`: lmfast's native SentencePiece BPE with byte fallback (Llama 2, Mistral;
  `lmfast.data.spbpe`): cuts each document into words where that provably keeps the ids,
  merges by rank with a word cache its threads share, one thread per range of documents. It
  refuses every other tokenizer, so `auto` moves on to the next engine.
- `gigatoken`: a Rust BPE (MIT, PyPI) that encodes a whole window of documents from one flat
  buffer in parallel, splitting long documents itself. It reads tokenizer.json's pre-tokenizer
  and normalizer, so it serves GPT-2, SmolLM2, Qwen2/3 and Llama 3 byte-level BPE and Llama 2 /
  Mistral SentencePiece BPE with byte fallback (`bench_prepare.py --families`).
- `tiktoken`: OpenAI's BPE with ranks built from the same vocab (GPT-2 style byte-level BPE
  whose ids follow merge order), threads over documents.
- `tokenizers`: the Hugging Face reference itself, `encode_batch` over documents cut at safe
  points (`chunking.split_long_pieces`) so long documents spread over threads too.

An engine is used only if it is *proven identical* for the tokenizer at hand: `select_engine`
encodes a built-in torture text (special-token strings, odd whitespace, scripts, emoji, ...)
plus a sample of the user's own documents with the engine and with the reference, and falls
back to the next engine on any difference (or refuses a forced one).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from lmfast.data import chunking
from lmfast.data.tokenizers import Tokenizer

logger = logging.getLogger(__name__)

EngineName = Literal["auto", "spbpe", "gigatoken", "tiktoken", "tokenizers"]
ENGINES: tuple[str, ...] = ("spbpe", "gigatoken", "tiktoken", "tokenizers")

# GPT-2's pre-tokenizer regex; HF's ByteLevel(use_regex=True) uses the same one
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# pieces longer than this are cut at safe points for engines that do not split documents themselves
MAX_PIECE_BYTES = 64 * 1024

PROBE_TEXTS: tuple[str, ...] = (
    "Hello world! It's a test: don't, won't, I'm, you're, we've, they'll, he'd. IT'S LOUD'S",
    "<|endoftext|> inside text, <|endoftext|><|endoftext|>, <s></s>[CLS] [SEP] <pad> <unk> <|im_start|>",
    "  leading spaces,\ttabs\t\tand   runs    of spaces   \n\n\n  trailing   \n \n\t\n",
    "Zahlen 1234567890 3.14159 -42 1,000,000 ١٢٣ ⅷ ½ ²³",
    "Ünïcödé: naïve café résumé Ångström straße İstanbul ǅ ﬁ",
    "中文测试，日本語のテキスト、한국어 텍스트。Ελληνικά Русский текст עברית العربية हिन्दी ไทย",
    "emoji 😀👍🏽👨‍👩‍👧‍👦 🇺🇦 ❤️ combining e\u0301 a\u0308 zero\u200bwidth\u200djoiner\u2060",
    "odd spaces:\u00a0nbsp\u2009thin\u3000ideographic\u2028line\u2029para\x85nel\x0bvt\x0cff\r\nCRLF\rCR",
    "control \x00\x01\x1b[31m ansi\x7f del \ufeff bom \ufffd replacement \U0001f9ea lab",
    "code: def f(x):\n    return x**2 # comment\n\tif a != b and c <= d: pass\n{'k': [1, 2]}",
    "punctuation --- ... !!! ??? ''' \"\"\" ``` ~~~ ___ *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]]",
    "URL https://example.com/a?b=c&d=e#f mail a.b@c.de path C:\\Users\\x /usr/bin/env",
    "X\nY\nZ\n\nA\n \nB \n C\n",
)


class Engine(Protocol):
    """Encodes documents' plain text (no BOS/EOS; special-token strings as text) to ids."""

    name: str

    def encode(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode pieces flat[offsets[i]:offsets[i+1]] (UTF-8 bytes).

        Returns:
            (uint32 ids of all pieces concatenated, int64 offsets into them, len n+1).
        """
        ...


def is_byte_level_bpe(tokenizer: Tokenizer) -> bool:
    """GPT-2 style: BPE model, ByteLevel pre-tokenizer with its regex, no normalizer, no prefix space.

    Only for these is a cut between "X\\nY" proven safe and are the fast engines eligible.
    """
    from tokenizers import models, pre_tokenizers

    backend = tokenizer.backend
    model, pre = backend.model, backend.pre_tokenizer
    return (
        isinstance(model, models.BPE)
        and backend.normalizer is None
        and isinstance(pre, pre_tokenizers.ByteLevel)
        and pre.use_regex
        and not pre.add_prefix_space
        and not model.byte_fallback
        and not model.dropout
        and all(token.special for token in backend.get_added_tokens_decoder().values())
    )


def _without_special_tokens(tokenizer: Tokenizer) -> str:
    """tokenizer.json text with the special added tokens removed: they become plain text.

    Only the small `added_tokens` list is parsed and rewritten; the vocabulary and merges (MBs of
    JSON) are spliced through untouched, which keeps engine start-up short.
    """
    text = tokenizer.json_text()
    key = text.find('"added_tokens":')
    if key < 0:
        return text
    start = text.index("[", key)
    added, end = json.JSONDecoder().raw_decode(text, start)
    kept = [t for t in added if not t.get("special")]
    return text[:start] + json.dumps(kept) + text[end:]


def _pieces_as_str(flat: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = flat.tobytes()
    return [
        data[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def _flatten(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.uint32, count=int(offsets[-1]))
    return ids, offsets


def _encode_split(encode_pieces, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode with long pieces cut at safe points, then regroup ids by the original pieces."""
    bounds = chunking.split_long_pieces(flat, offsets, MAX_PIECE_BYTES)
    ids, fine_offsets = encode_pieces(flat, bounds)
    if len(bounds) == len(offsets):
        return ids, fine_offsets
    # bounds is a superset of offsets: keep the fine offsets that sit at an original boundary
    keep = np.searchsorted(bounds, offsets)
    return ids, np.ascontiguousarray(fine_offsets[keep])


class TokenizersEngine:
    """The Hugging Face reference: `encode_batch_fast` over pieces (threads via RAYON_NUM_THREADS)."""

    name = "tokenizers"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._backend = tokenizer.plain_text_backend()
        self._splittable = is_byte_level_bpe(tokenizer)

    def _encode_pieces(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        encodings = encode(_pieces_as_str(flat, offsets), add_special_tokens=False)
        return _flatten([e.ids for e in encodings])

    def encode(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._splittable:
            return _encode_split(self._encode_pieces, flat, offsets)
        return self._encode_pieces(flat, offsets)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


class TiktokenEngine:
    """tiktoken with mergeable ranks = the vocabulary's ids (valid when ids follow merge order)."""

    name = "tiktoken"

    def __init__(self, tokenizer: Tokenizer, num_threads: int) -> None:
        import tiktoken

        if not is_byte_level_bpe(tokenizer):
            raise ValueError("tiktoken needs a GPT-2 style byte-level BPE tokenizer")
        decoder = {char: byte for byte, char in _bytes_to_unicode().items()}
        special = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
        ranks = {
            bytes(decoder[c] for c in token): token_id
            for token, token_id in tokenizer.backend.get_vocab(with_added_tokens=False).items()
            if token not in special
        }
        _check_ranks_follow_merges(tokenizer, ranks, decoder)
        self._encoding = tiktoken.Encoding(
            name=f"lmfast-{tokenizer.name}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
        self._threads = num_threads

    def _encode_pieces(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        texts = _pieces_as_str(flat, offsets)
        return _flatten(self._encoding.encode_ordinary_batch(texts, num_threads=self._threads))

    def encode(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _encode_split(self._encode_pieces, flat, offsets)


def _check_ranks_follow_merges(
    tokenizer: Tokenizer, ranks: dict[bytes, int], decoder: dict[str, int]
) -> None:
    """tiktoken equals HF BPE only if merging by the merged token's id is merging by merge order.

    Holds when every single byte is a token, each merge's result has a larger id than the one
    before (ids in merge order) and no two merges produce the same bytes.

    Raises:
        ValueError: the vocabulary breaks one of these, so tiktoken could give other ids.
    """
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError("not every byte is a token")
    merges = json.loads(tokenizer.json_text())["model"]["merges"]
    previous, seen = -1, set()
    for merge in merges:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        merged = bytes(decoder[c] for c in left + right)
        rank = ranks.get(merged)
        if rank is None or rank <= previous or merged in seen:
            raise ValueError(f"merge {left!r} + {right!r} is out of id order for tiktoken")
        previous = rank
        seen.add(merged)


def _gigatoken_json(tokenizer: Tokenizer) -> tuple[str, int | None]:
    """tokenizer.json text for gigatoken, and the first id to drop from its output (or None).

    gigatoken maps every byte to a single-byte token. Byte-level vocabularies that lack some
    bytes (SmolLM2 has no token for 0x04, 0xC0, ...) get those bytes added with ids past the
    vocabulary; no merge involves them, so gigatoken gives them back as lone ids, and dropping
    those ids is exactly what the reference does with a byte it has no token for (BPE without
    an unk token skips it).

    Raises:
        ValueError: a byte is missing but the BPE model has an unk token (the reference would
            emit it, possibly fused); not mapped here.
    """
    from tokenizers import models

    text = _without_special_tokens(tokenizer)
    backend = tokenizer.backend
    pre = backend.pre_tokenizer
    pre_json = "null" if pre is None else pre.__getstate__().decode()
    if (
        not isinstance(backend.model, models.BPE)
        or backend.model.byte_fallback
        or '"ByteLevel"' not in pre_json
    ):
        return text, None
    if all(backend.model.token_to_id(char) is not None for char in _bytes_to_unicode().values()):
        return text, None  # the vocabulary (MBs of JSON) is parsed only when bytes are missing
    config = json.loads(text)
    model = config.get("model") or {}
    vocab: dict[str, int] = model["vocab"]
    missing = [char for char in _bytes_to_unicode().values() if char not in vocab]
    if model.get("unk_token") is not None:
        raise ValueError(f"{len(missing)} bytes have no token and the BPE model has an unk token")
    if any(any(char in token for char in missing) for token in vocab):
        raise ValueError("a token holds a byte that is not itself a token")
    first = tokenizer.vocab_size
    vocab.update({char: first + i for i, char in enumerate(missing)})
    return json.dumps(config), first


class GigatokenEngine:
    """gigatoken: one flat buffer + offsets in, one flat uint32 buffer + offsets out, all cores.

    Serves byte-level BPE (GPT-2, SmolLM2, Qwen2/3, Llama 3 pre-tokenizer regexes) and
    SentencePiece BPE with byte fallback (Llama 2, Mistral); `select_engine` proves each one.
    """

    name = "gigatoken"

    def __init__(self, tokenizer: Tokenizer) -> None:
        import gigatoken

        # no thread to overlap awkward's import (0.4-0.6 s, done at the first encode) with this:
        # gigatoken holds the GIL while it reads the vocabulary, so the two would only take turns
        text, self._drop_from = _gigatoken_json(tokenizer)
        self._tokenizer = gigatoken.Tokenizer.from_json(text)

    def encode(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import awkward as ak

        layout = ak.contents.ListOffsetArray(
            ak.index.Index64(offsets),
            ak.contents.NumpyArray(flat, parameters={"__array__": "byte"}),
            parameters={"__array__": "bytestring"},
        )
        # parallel=None: all cores, except inside a forked or multiprocessing worker (no deadlock)
        result = self._tokenizer.encode_batch(ak.Array(layout), parallel=None).layout
        if not isinstance(result, ak.contents.ListOffsetArray):  # not seen with gigatoken 0.10
            result = ak.to_packed(ak.Array(result)).layout
        ids = np.asarray(result.content.data, dtype=np.uint32)
        out_offsets = np.asarray(result.offsets, dtype=np.int64)
        if out_offsets[0] != 0:
            ids, out_offsets = ids[out_offsets[0] :], out_offsets - out_offsets[0]
        ids = ids[: out_offsets[-1]]
        if self._drop_from is not None:
            ids, out_offsets = _drop_ids_from(ids, out_offsets, self._drop_from)
        return ids, out_offsets


def _drop_ids_from(ids: np.ndarray, offsets: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove ids >= `first` from every piece, keeping the pieces' offsets consistent."""
    keep = ids < first
    if keep.all():
        return ids, offsets
    kept_before = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return ids[keep], kept_before[offsets]


def set_thread_pool_size(num_threads: int | None) -> None:
    """Size the Rust engines' rayon pools (gigatoken, tokenizers) before their first use.

    Both read RAYON_NUM_THREADS once, when their global pool starts; setting it here (and not
    only in the CLI) makes `prepare(PrepareConfig(num_threads=2))` from Python bound them too.
    A pool already started in this process keeps its size.
    """
    if num_threads:
        os.environ["RAYON_NUM_THREADS"] = str(num_threads)


def build_engine(name: str, tokenizer: Tokenizer, num_threads: int | None = None) -> Engine:
    """Construct one engine by name (no identity check; see `select_engine`); 0/None threads = all."""
    set_thread_pool_size(num_threads)
    if name == "spbpe":
        from lmfast.data.spbpe import SpbpeEngine

        return SpbpeEngine(tokenizer, num_threads)
    if name == "gigatoken":
        return GigatokenEngine(tokenizer)
    if name == "tiktoken":
        return TiktokenEngine(tokenizer, num_threads or os.cpu_count() or 1)
    if name == "tokenizers":
        return TokenizersEngine(tokenizer)
    raise ValueError(f"unknown tokenizer engine {name!r}; expected one of {('auto', *ENGINES)}")


def _as_pieces(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


class ReferenceIds:
    """The reference's ids of `texts`, computed in a thread while the caller builds engines.

    `encode_batch` releases the GIL, so the reference and an engine's start-up (spbpe's tables,
    gigatoken's vocabulary) overlap. The backend reads special tokens as text until `result()`
    returns; nothing may modify it meanwhile (pyo3 would refuse: it is borrowed).
    """

    def __init__(self, tokenizer: Tokenizer, texts: Sequence[str]) -> None:
        self._texts = list(texts)
        self._context = tokenizer.special_tokens_as_text()
        self._reference = self._context.__enter__()
        self._outcome: list[object] = []
        self._thread = threading.Thread(target=self._run, name="lmfast-reference", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            encodings = self._reference.encode_batch(self._texts, add_special_tokens=False)
            self._outcome.append([e.ids for e in encodings])
        except BaseException as error:
            self._outcome.append(error)

    def close(self) -> None:
        """Wait for the thread and give the backend back (idempotent)."""
        self._thread.join()
        context, self._context = self._context, None
        if context is not None:
            context.__exit__(None, None, None)

    def result(self) -> list[list[int]]:
        """The ids, one list per text (closes first)."""
        self.close()
        outcome = self._outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]


def first_difference(
    engine: Engine, tokenizer: Tokenizer, texts: Sequence[str], expected: ReferenceIds | None = None
) -> str | None:
    """Compare `engine` with the reference on `texts`; a description of the first difference, or None.

    `expected`: the reference's ids of the same texts, already under way.
    """
    flat, offsets = _as_pieces(texts)
    ids, id_offsets = engine.encode(flat, offsets)
    expected_ids = (expected or ReferenceIds(tokenizer, texts)).result()
    for i, (text, want) in enumerate(zip(texts, expected_ids, strict=True)):
        got = ids[id_offsets[i] : id_offsets[i + 1]].tolist()
        if got != want:
            return f"text {i} ({text[:40]!r}...): {engine.name} gave {got[:12]}..., reference {want[:12]}..."
    return None


def _first_line(error: BaseException) -> str:
    """The first line of an engine's error (Rust panics append a multi-line location)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def select_engine(
    tokenizer: Tokenizer, requested: str = "auto", samples: Sequence[str] = (), num_threads: int | None = None
) -> Engine:
    """The fastest engine proven identical to the reference on the probe texts and `samples`.

    Any failure of a fast engine (missing package, a tokenizer it cannot load, a Rust panic, a
    difference in ids) makes `auto` fall back to the next one; the reference always works.

    Args:
        requested: "auto", or an engine name to force (still checked: any failure raises).
        samples: a few of the user's documents, checked too.
        num_threads: threads for the engines' pools; None or 0 = all cores.

    Raises:
        ValueError: a forced engine is unavailable, cannot serve this tokenizer or differs from
            the reference (one line).
    """
    if requested != "auto" and requested not in ENGINES:
        raise ValueError(f"unknown tokenizer engine {requested!r}; expected one of {('auto', *ENGINES)}")
    candidates = ENGINES if requested == "auto" else (requested,)
    texts = [*PROBE_TEXTS, *samples]
    expected = ReferenceIds(tokenizer, texts)
    try:
        return _first_identical(tokenizer, requested, candidates, texts, expected, num_threads)
    finally:
        expected.close()


def _first_identical(
    tokenizer: Tokenizer,
    requested: str,
    candidates: Sequence[str],
    texts: Sequence[str],
    expected: ReferenceIds,
    num_threads: int | None,
) -> Engine:
    """`select_engine`'s loop: the first candidate that builds and matches `expected`."""
    for name in candidates:
        if name == "tokenizers":
            break
        try:
            engine = build_engine(name, tokenizer, num_threads)
            difference = first_difference(engine, tokenizer, texts, expected)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # pyo3's PanicException derives from BaseException
            if requested != "auto":
                raise ValueError(
                    f"tokenizer engine {name!r} cannot serve {tokenizer.name}: {_first_line(error)}"
                ) from None
            # an expected outcome of the probe (a faster engine that does not fit this tokenizer):
            # one short line, for --log_level debug only; the chosen engine is logged at info
            logger.debug("engine %s cannot serve %s (%s)", name, tokenizer.name, _first_line(error)[:100])
            continue
        if difference is None:
            return engine
        if requested != "auto":
            raise ValueError(f"tokenizer engine {name!r} differs from the reference: {difference}")
        logger.warning("engine %s differs from the reference, falling back: %s", name, difference)
    set_thread_pool_size(num_threads)
    return TokenizersEngine(tokenizer)
