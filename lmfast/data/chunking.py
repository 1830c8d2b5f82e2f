"""The byte and token kernels of `prepare`: readable NumPy/Python references and the dispatch.

Each public function is the *specification*; `csrc/_chunking.pyx` implements the same signature
in Cython with the GIL released and is proven equal in `tests/data/test_chunking.py`. Pass
`backend="python"` to force the reference, `"cython"` to require the native module, `"auto"`
(default) to use the native one when it was built.

Conventions: byte buffers are 1-D `uint8` arrays; offsets are `int64`; a document is the bytes
between two delimiter lines, and a *piece* is a consecutive part of one document (long documents
are cut into pieces at safe points; see `last_safe_cut`).
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Backend = Literal["auto", "cython", "python"]

# ASCII whitespace as str.strip() sees it for bytes < 0x80 (\t \n \v \f \r, 0x1c-0x1f, space)
_WHITESPACE = frozenset(b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ")
_NL, _CR = 0x0A, 0x0D


def _native() -> ModuleType | None:
    try:
        from lmfast.data import _chunking  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _chunking


def native_available() -> bool:
    """Whether the Cython kernels were built (`python setup.py build_ext --inplace` or pip install)."""
    return _native() is not None


def resolve_backend(backend: Backend = "auto") -> Literal["cython", "python"]:
    """The backend a call with `backend` will use.

    Raises:
        ImportError: `backend="cython"` but the extension was not built.
        ValueError: unknown backend name.
    """
    if backend == "python":
        return "python"
    if backend not in ("auto", "cython"):
        raise ValueError(f"unknown kernel backend {backend!r}; expected 'auto', 'cython' or 'python'")
    if native_available():
        return "cython"
    if backend == "cython":
        raise ImportError("lmfast.data._chunking is not built; run `python setup.py build_ext --inplace`")
    return "python"


def _use_native(backend: Backend) -> ModuleType | None:
    return _native() if resolve_backend(backend) == "cython" else None


def _is_graphic(byte: int) -> bool:
    """ASCII printable, not whitespace: a byte that can never merge with a neighbouring newline."""
    return 0x21 <= byte <= 0x7E


# --------------------------------------------------------------------------- documents


def find_delimiter_lines(
    buf: np.ndarray, delimiter: bytes, at_eof: bool, backend: Backend = "auto"
) -> np.ndarray:
    """Lines of `buf` that equal `delimiter` once ASCII whitespace is stripped from both ends.

    Args:
        buf: uint8 bytes, starting at a line start.
        delimiter: the stripped delimiter, non-empty.
        at_eof: whether `buf` ends the file; if not, a last line without '\\n' is incomplete and
            never matches (the next window sees it whole).

    Returns:
        int64 array (k, 2): [line start, line end) with the end after the line's '\\n' (or at
        len(buf) for a last line at EOF).
    """
    native = _use_native(backend)
    if native is not None:
        return native.find_delimiter_lines(buf, delimiter, at_eof)
    data = buf.tobytes()
    found: list[tuple[int, int]] = []
    start = 0
    while start < len(data):
        newline = data.find(b"\n", start)
        if newline < 0:
            if not at_eof:
                break
            end = len(data)
        else:
            end = newline + 1
        if data[start:end].strip(bytes(_WHITESPACE)) == delimiter:
            found.append((start, end))
        start = end
    return np.asarray(found, dtype=np.int64).reshape(-1, 2)


def find_byte(buf: np.ndarray, value: int, backend: Backend = "auto") -> int:
    """Offset of the first byte equal to `value` in `buf`, or -1 (memchr; no temporary array)."""
    native = _use_native(backend)
    if native is not None:
        return int(native.find_byte(buf, value))
    return buf.tobytes().find(bytes([value]))


def last_safe_cut(buf: np.ndarray, lo: int, hi: int, backend: Backend = "auto") -> int:
    """The largest p in [lo, hi] where cutting `buf` into [..p) and [p..) keeps every token id.

    p is safe when buf[p-1] is '\\n' (after an optional '\\r'), the byte before it and buf[p]
    are both ASCII graphic characters ("X\\nY"): byte-level BPE pre-tokenizers (GPT-2 style)
    always make such a lone newline its own pre-token, so the ids of both halves concatenate to
    the ids of the whole. Returns -1 when there is none.
    """
    native = _use_native(backend)
    if native is not None:
        return int(native.last_safe_cut(buf, lo, hi))
    n = len(buf)
    for p in range(min(hi, n - 1), max(lo, 2) - 1, -1):
        if buf[p - 1] != _NL or not _is_graphic(int(buf[p])):
            continue
        before = int(buf[p - 2])
        if _is_graphic(before) or (before == _CR and p >= 3 and _is_graphic(int(buf[p - 3]))):
            return p
    return -1


def gather_documents(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    final: np.ndarray,
    crlf: bool,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Copy byte ranges [starts[i], ends[i]) of `buf` into one contiguous buffer.

    With `crlf`, every "\\r\\n" becomes "\\n". Where `final[i]` (the last piece of a document),
    the one line break that ends the range is dropped: a document is its lines joined by '\\n'.

    Returns:
        (flat uint8 bytes, int64 offsets of length n+1): piece i is flat[offsets[i]:offsets[i+1]].
    """
    native = _use_native(backend)
    if native is not None:
        return native.gather_documents(buf, starts, ends, final, crlf)
    pieces = []
    for start, end, is_final in zip(starts.tolist(), ends.tolist(), final.tolist(), strict=True):
        piece = buf[start:end].tobytes()
        if crlf:
            piece = piece.replace(b"\r\n", b"\n")
        if is_final and piece.endswith(b"\n"):
            piece = piece[:-1]
        pieces.append(piece)
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces], dtype=np.int64)
    return np.frombuffer(b"".join(pieces), dtype=np.uint8).copy(), offsets


def blank_documents(flat: np.ndarray, offsets: np.ndarray, backend: Backend = "auto") -> np.ndarray:
    """bool per piece: True when it holds only ASCII whitespace (or nothing)."""
    native = _use_native(backend)
    if native is not None:
        return native.blank_documents(flat, offsets)
    data = flat.tobytes()
    ws = bytes(_WHITESPACE)
    return np.array(
        [not data[a:b].strip(ws) for a, b in zip(offsets[:-1], offsets[1:], strict=True)], dtype=bool
    )


def utf8_error_offset(buf: np.ndarray, backend: Backend = "auto") -> int:
    """Offset of the first byte that makes `buf` invalid UTF-8 (as Python's strict decoder), or -1."""
    native = _use_native(backend)
    if native is not None:
        return int(native.utf8_error_offset(buf))
    try:
        buf.tobytes().decode("utf-8")
    except UnicodeDecodeError as error:
        return int(error.start)
    return -1


def split_long_pieces(
    flat: np.ndarray, offsets: np.ndarray, max_piece_bytes: int, backend: Backend = "auto"
) -> np.ndarray:
    """Cut pieces longer than `max_piece_bytes` at safe points (`last_safe_cut`).

    Lets an engine without its own splitting (tokenizers, tiktoken) parallelise inside one long
    document. Where a piece has no safe point in range, the cut moves to the next safe point
    after it (or none): correctness never depends on finding one.

    Returns:
        int64 boundaries, a superset of `offsets` (same first and last value).
    """
    native = _use_native(backend)
    if native is not None:
        return native.split_long_pieces(flat, offsets, max_piece_bytes)
    bounds: list[int] = [int(offsets[0])]
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        position = start
        while end - position > max_piece_bytes:
            cut = last_safe_cut(flat[:end], position + 1, position + max_piece_bytes, backend="python")
            if cut < 0:
                cut = _next_safe_cut(flat[:end], position + max_piece_bytes + 1)
                if cut < 0:
                    break
            bounds.append(cut)
            position = cut
        bounds.append(end)
    return np.asarray(bounds, dtype=np.int64)


def _next_safe_cut(buf: np.ndarray, lo: int) -> int:
    """The smallest safe cut >= lo (reference helper of `split_long_pieces`)."""
    for p in range(max(lo, 2), len(buf)):
        if last_safe_cut(buf, p, p, backend="python") == p:
            return p
    return -1


# --------------------------------------------------------------------------- samples


def write_samples(
    ids: np.ndarray,
    piece_offsets: np.ndarray,
    piece_first: np.ndarray,
    piece_last: np.ndarray,
    bos: int,
    eos: int,
    max_len: int,
    min_len: int,
    out: np.ndarray,
    out_pos: int,
    cur_start: int,
    in_doc: bool,
    starts_out: np.ndarray,
    backend: Backend = "auto",
) -> tuple[int, int, bool, int]:
    """Cut the token stream of documents into samples, written straight into `out`.

    A document's stream is [bos] + ids of its pieces in order + [eos] (bos/eos = -1: none). It is
    cut into consecutive samples of `max_len` tokens; the last one is dropped when shorter than
    `min_len`. Samples never cross documents. A document may continue into the next call: the
    state (out_pos, cur_start, in_doc) is carried, and out[cur_start:out_pos] is its open sample.

    Args:
        ids: uint32 token ids of all pieces, concatenated.
        piece_offsets: int64, len n+1; piece i is ids[piece_offsets[i]:piece_offsets[i+1]].
        piece_first / piece_last: uint8 flags, the piece starts / ends its document.
        out: uint16 or int32 output; out[:out_pos] already written. Every id is range-checked
            against the dtype before the cast.
        starts_out: int64, receives the start (index into `out`) of each completed sample.

    Returns:
        (out_pos, cur_start, in_doc, number of starts written).

    Raises:
        ValueError: an id does not fit `out`'s dtype, or the piece flags are inconsistent (the
            data, not the options: those are checked once, by `PrepareConfig`).
    """
    native = _use_native(backend)
    if native is not None:
        return native.write_samples(
            ids, piece_offsets, piece_first, piece_last, bos, eos, max_len, min_len,
            out, out_pos, cur_start, in_doc, starts_out,
        )  # fmt: skip
    assert 1 <= min_len <= max_len, "checked by PrepareConfig"
    limit = int(np.iinfo(out.dtype).max)
    n_starts = 0

    def put(token: int) -> None:
        nonlocal out_pos, cur_start, n_starts
        if not 0 <= token <= limit:
            raise ValueError(f"token id {token} does not fit {out.dtype} (max {limit})")
        out[out_pos] = token
        out_pos += 1
        if out_pos - cur_start == max_len:
            starts_out[n_starts] = cur_start
            n_starts += 1
            cur_start = out_pos

    for i in range(len(piece_offsets) - 1):
        if piece_first[i]:
            if in_doc:
                raise ValueError(f"piece {i} starts a document while another is open")
            in_doc, cur_start = True, out_pos
            if bos >= 0:
                put(bos)
        elif not in_doc:
            raise ValueError(f"piece {i} continues a document that was never started")
        for token in ids[piece_offsets[i] : piece_offsets[i + 1]].tolist():
            put(token)
        if piece_last[i]:
            if eos >= 0:
                put(eos)
            length = out_pos - cur_start
            if length >= min_len and length > 0:
                starts_out[n_starts] = cur_start
                n_starts += 1
            out_pos = cur_start if length < min_len else out_pos
            cur_start, in_doc = out_pos, False
    return out_pos, cur_start, in_doc, n_starts
