"""Streaming a documents file into batches of pieces, one memory-mapped window at a time.

A document is the text between lines equal to the delimiter (ASCII whitespace stripped from the
line), its lines joined by '\\n' ("\\r\\n" line endings become "\\n"); documents holding only
whitespace are skipped; text after the last delimiter line is a document too.

Memory stays bounded whatever the file size: only one window (`window_bytes`) is mapped at a
time, and a document longer than a window is cut into pieces at safe points
(`chunking.last_safe_cut`), which the tokenizer engines encode separately with identical ids.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmfast.data import chunking
from lmfast.data.chunking import Backend

ENCODING_ERRORS = ("strict", "replace", "ignore")
# a window grows (doubling) up to this size when it holds no delimiter line and no safe cut
MAX_WINDOW_BYTES = 1 << 31


class DocumentsError(ValueError):
    """The documents file cannot be used; the message names the file and the problem."""


@dataclass
class PieceBatch:
    """Consecutive pieces of documents from one window.

    Attributes:
        flat: uint8 UTF-8 bytes of all pieces.
        offsets: int64, len n+1: piece i is flat[offsets[i]:offsets[i+1]].
        first: uint8 flags, piece i starts its document.
        last: uint8 flags, piece i ends its document.
    """

    flat: np.ndarray
    offsets: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @property
    def n_documents(self) -> int:
        """Documents completed in this batch."""
        return int(self.last.sum())

    def texts(self) -> list[str]:
        data = self.flat.tobytes()
        return [
            data[a:b].decode("utf-8")
            for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist(), strict=True)
        ]


def check_documents_file(path: Path, delimiter: str, flag: str) -> None:
    """Cheap checks before any work: readable, non-empty, the delimiter occurs somewhere.

    Raises:
        DocumentsError: naming `flag` and `path`.
    """
    if not path.exists():
        raise DocumentsError(f"{flag}: file not found: {path}")
    if not path.is_file():
        raise DocumentsError(f"{flag}: not a regular file: {path}")
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                raise DocumentsError(f"{flag}: file is empty: {path}")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                found = mapped.find(delimiter.encode("utf-8")) >= 0
    except PermissionError:
        raise DocumentsError(f"{flag}: permission denied: {path}") from None
    except OSError as error:
        raise DocumentsError(f"{flag}: cannot read {path}: {error.strerror or error}") from None
    if not found:
        raise DocumentsError(f"{flag}: no line equal to --end_of_document {delimiter!r} in {path}")


def read_sample_text(path: Path, max_bytes: int = 64 * 1024) -> str:
    """The first `max_bytes` of a file (cut at a line end), for the engine identity check."""
    with path.open("rb") as file:
        data = file.read(max_bytes)
    if len(data) == max_bytes and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]
    return data.replace(b"\r\n", b"\n").decode("utf-8", errors="replace")


def _line_number(path: Path, offset: int) -> int:
    """1-based line of byte `offset` (counted only when reporting an error)."""
    count, position = 0, 0
    with path.open("rb") as file:
        while position < offset:
            block = file.read(min(1 << 24, offset - position))
            if not block:
                break
            count += block.count(b"\n")
            position += len(block)
    return count + 1


def _fix_encoding(
    batch_flat: np.ndarray, offsets: np.ndarray, errors: str, backend: Backend
) -> tuple[np.ndarray, np.ndarray]:
    """Re-encode the pieces that hold invalid UTF-8 with `errors` ("replace" -> U+FFFD, "ignore")."""
    data = batch_flat.tobytes()
    pieces = []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        piece = data[a:b]
        if chunking.utf8_error_offset(np.frombuffer(piece, dtype=np.uint8), backend=backend) >= 0:
            piece = piece.decode("utf-8", errors=errors).encode("utf-8")
        pieces.append(piece)
    new_offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    new_offsets[1:] = np.cumsum([len(p) for p in pieces])
    return np.frombuffer(b"".join(pieces), dtype=np.uint8).copy(), new_offsets


def iter_pieces(
    path: Path,
    delimiter: str,
    *,
    flag: str = "documents file",
    window_bytes: int = 32 << 20,
    encoding_errors: str = "strict",
    splittable: bool = True,
    backend: Backend = "auto",
) -> Iterator[PieceBatch]:
    """Yield the documents of `path` as batches of pieces, one window at a time.

    Args:
        delimiter: the document delimiter line (stripped), e.g. "[END_OF_DOCUMENT]".
        flag: the CLI flag that named `path`, for error messages.
        window_bytes: bytes mapped at a time (peak memory is a few times this).
        encoding_errors: "strict" (invalid UTF-8 raises, saying where), "replace" or "ignore".
        splittable: whether long documents may be cut at safe points (byte-level BPE only);
            otherwise a window grows to hold a whole document.

    Raises:
        DocumentsError: invalid UTF-8 (strict), no delimiter line, a document with no safe cut
            within MAX_WINDOW_BYTES.
    """
    if encoding_errors not in ENCODING_ERRORS:
        raise DocumentsError(f"--encoding_errors: expected one of {ENCODING_ERRORS}, got {encoding_errors!r}")
    needle = delimiter.strip().encode("utf-8")
    size = path.stat().st_size
    position, window, doc_open, delimiters_seen = 0, window_bytes, False, 0
    while position < size:
        end = min(position + window, size)
        at_eof = end == size
        buf = np.memmap(path, dtype=np.uint8, mode="r", offset=position, shape=(end - position,))
        lines = chunking.find_delimiter_lines(buf, needle, at_eof, backend=backend)
        if len(lines):
            delimiters_seen += len(lines)
            starts = np.concatenate(([0], lines[:, 1]))
            ends = np.concatenate((lines[:, 0], [len(buf)]))
            final = np.ones(len(starts), dtype=np.uint8)
            first = np.ones(len(starts), dtype=np.uint8)
            first[0] = not doc_open
            if at_eof:
                consumed = len(buf)
            else:  # the text after the last delimiter line continues in the next window
                starts, ends, final, first = starts[:-1], ends[:-1], final[:-1], first[:-1]
                consumed = int(lines[-1, 1])
            doc_open = False
        elif at_eof:
            starts, ends = np.array([0]), np.array([len(buf)])
            first, final = np.array([not doc_open], dtype=np.uint8), np.ones(1, dtype=np.uint8)
            consumed, doc_open = len(buf), False
        else:
            cut = chunking.last_safe_cut(buf, 1, len(buf) - 1, backend=backend) if splittable else -1
            if cut > 0 and chunking.find_byte(buf[cut:], 0x0A, backend=backend) < 0:
                # The line at the cut runs past the window, so it may be the delimiter line
                # (find_delimiter_lines never matches an incomplete line). Cutting there would
                # end this non-final piece with the document's last line break, which only a
                # final piece may drop. Cut before a complete, non-delimiter line instead.
                cut = chunking.last_safe_cut(buf, 1, cut - 1, backend=backend)
            if cut <= 0:
                del buf
                if window >= MAX_WINDOW_BYTES:
                    raise DocumentsError(
                        f"{flag}: {path}: a document around byte {position} is longer than "
                        f"{MAX_WINDOW_BYTES} bytes with no safe point to cut it"
                    )
                window *= 2
                continue
            starts, ends = np.array([0]), np.array([cut])
            first, final = np.array([not doc_open], dtype=np.uint8), np.zeros(1, dtype=np.uint8)
            consumed, doc_open = cut, True
        starts, ends = starts.astype(np.int64), ends.astype(np.int64)
        crlf = chunking.find_byte(buf[:consumed], 0x0D, backend=backend) >= 0
        flat, offsets = chunking.gather_documents(buf, starts, ends, final, crlf, backend=backend)
        bad = chunking.utf8_error_offset(flat, backend=backend)
        if bad >= 0:
            if encoding_errors == "strict":
                piece = int(np.searchsorted(offsets, bad, side="right")) - 1
                file_offset = position + int(starts[piece]) + (bad - int(offsets[piece]))
                raise DocumentsError(
                    f"{flag}: {path}: invalid UTF-8 at byte {file_offset} (line "
                    f"{_line_number(path, file_offset)}); fix the file or pass --encoding_errors replace"
                )
            flat, offsets = _fix_encoding(flat, offsets, encoding_errors, backend)
        blank = chunking.blank_documents(flat, offsets, backend=backend) & (first == 1) & (final == 1)
        if blank.any():
            keep = ~blank
            flat, offsets = chunking.gather_documents(
                flat,
                offsets[:-1][keep],
                offsets[1:][keep],
                np.zeros(int(keep.sum()), np.uint8),
                False,
                backend=backend,
            )
            first, final = first[keep], final[keep]
        del buf  # unmap the window: resident memory stays bounded
        position += consumed
        window = window_bytes
        if len(first):
            yield PieceBatch(flat=flat, offsets=offsets, first=first, last=final)
    if delimiters_seen == 0:
        raise DocumentsError(f"{flag}: no line equal to --end_of_document {delimiter.strip()!r} in {path}")
