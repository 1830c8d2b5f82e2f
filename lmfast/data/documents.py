"""Streaming a documents file into batches of pieces, one memory-mapped window at a time.

A document is the text between lines equal to the delimiter (ASCII whitespace stripped from the
line), its lines joined by '\\n' ("\\r\\n" line endings become "\\n"); documents holding only
whitespace are skipped; text after the last delimiter line is a document too.

Memory stays bounded whatever the file and whatever its content: one window (`window_bytes`) is
read at a time into a buffer (read, not memory-mapped, so a file that shrinks meanwhile is a clear
error instead of SIGBUS), and a document longer than a window is cut into pieces at safe points
(`chunking.last_safe_cut`), which the tokenizer engines encode separately with identical ids.
Where no safe point exists (one 200 MB "word", or any long document of a tokenizer whose cuts are
not provably safe), the window grows up to `max_window_bytes(window_bytes)` and the document is
then cut at a byte bound (`forced_cut`): memory stays bounded, every engine still gets the same
pieces (so their ids agree), and only ids right at such a cut can differ from encoding the
document whole. The count is reported as `PieceBatch.forced_cuts`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmfast.data import chunking, inputs
from lmfast.data.chunking import Backend
from lmfast.flags import UserError

logger = logging.getLogger(__name__)

ENCODING_ERRORS = ("strict", "replace", "ignore")
# a window with no delimiter line and no safe cut grows (doubling) up to twice its size, and at
# least to this, before a document is cut at a byte bound
MIN_GROWN_WINDOW_BYTES = 1 << 20
_WHITESPACE = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "


def max_window_bytes(window_bytes: int) -> int:
    """The largest window read while looking for a safe cut: the bound on memory per window."""
    return max(2 * window_bytes, MIN_GROWN_WINDOW_BYTES)


class DocumentsError(UserError):
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
    forced_cuts: int = 0

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
            found = _contains(file, delimiter.encode("utf-8"))
    except PermissionError:
        raise DocumentsError(f"{flag}: permission denied: {path}") from None
    except OSError as error:
        raise DocumentsError(f"{flag}: cannot read {path}: {error.strerror or error}") from None
    if not found:
        raise DocumentsError(f"{flag}: no line equal to --end_of_document {delimiter!r} in {path}")


def _contains(file, needle: bytes, block: int = 1 << 20) -> bool:
    """Whether the file holds `needle`, read in blocks (never mapped: a shrinking file is no SIGBUS)."""
    tail = b""
    while chunk := file.read(block):
        if needle in tail + chunk[: len(needle)] or needle in chunk:
            return True
        tail = chunk[-(len(needle) - 1) :] if len(needle) > 1 else b""
    return False


class _FileSource:
    """Windows of a plain file, each read into a fresh buffer (`inputs.StreamSource`'s interface)."""

    def __init__(self, path: Path, flag: str) -> None:
        self._path, self._flag = path, flag
        self._file = path.open("rb")
        self._size = os.fstat(self._file.fileno()).st_size

    def read(self, position: int, length: int) -> tuple[np.ndarray, bool]:
        end = min(position + length, self._size)
        buf = _read_window(self._file, self._path, self._flag, position, end - position, self._size)
        return buf, end == self._size

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def _window_source(path: Path, flag: str, compression: str) -> Iterator[_FileSource | inputs.StreamSource]:
    if compression == "none":
        source = _FileSource(path, flag)
        try:
            yield source
        finally:
            source.close()
        return
    try:
        with inputs.open_binary(path, compression) as stream:
            yield inputs.StreamSource(stream)
    except inputs.decompression_errors() as error:
        raise DocumentsError(f"{flag}: {path}: not a valid {compression} stream ({error})") from None


def _read_window(file, path: Path, flag: str, position: int, length: int, size: int) -> np.ndarray:
    """`length` bytes at `position`, read into a fresh buffer.

    Raises:
        DocumentsError: the file ended early, i.e. it shrank after the run started.
    """
    buf = np.empty(length, dtype=np.uint8)
    view, done = memoryview(buf), 0
    while done < length:
        got = os.preadv(file.fileno(), [view[done:]], position + done)
        if got == 0:
            raise DocumentsError(
                f"{flag}: {path} shrank while being read (was {size} bytes, ends at {position + done}); "
                "do not modify a documents file during prepare"
            )
        done += got
    return buf


def _line_may_be_delimiter(prefix: bytes, delimiter: bytes) -> bool:
    """Whether a line starting with `prefix` could still equal the delimiter once stripped."""
    text = prefix.lstrip(_WHITESPACE)
    return delimiter.startswith(text) or (
        text.startswith(delimiter) and not text[len(delimiter) :].strip(_WHITESPACE)
    )


def forced_cut(buf: np.ndarray, delimiter: bytes, open_line: bool) -> int:
    """A byte bound p in (0, len(buf)] to cut a window that holds no delimiter line and no safe cut.

    The cut is at a UTF-8 character boundary, never between "\r" and "\n" nor right after a
    "\n", and never inside a line that could still be the delimiter line, so the documents
    (their bytes) are exactly those of the uncut file. `open_line`: buf starts inside a line
    already known not to be the delimiter.

    Returns:
        p, or -1 when none exists (only for a window that is one line of whitespace around a
        possible delimiter).
    """
    data = buf.tobytes()
    newline = data.rfind(b"\n")
    line_start = newline + 1
    p = len(data) - 1  # the byte after the cut must be seen to know the cut is a character boundary
    while p > line_start and (0x80 <= data[p] < 0xC0 or data[p - 1] == 0x0D):
        p -= 1
    if p > line_start and (
        (newline < 0 and open_line) or not _line_may_be_delimiter(data[line_start:p], delimiter)
    ):
        return p
    # cut just before the last line break: the line it ends is complete, so not the delimiter
    p = newline - 1 if newline > 0 and data[newline - 1] == 0x0D else newline
    return p if p > 0 else -1


def read_sample_text(path: Path, max_bytes: int = 64 * 1024, compression: str = "none") -> str:
    """The first `max_bytes` of a file (cut at a line end), for the engine identity check."""
    data = inputs.read_prefix(path, compression, max_bytes)
    if len(data) == max_bytes and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]
    return data.replace(b"\r\n", b"\n").decode("utf-8", errors="replace")


def _line_number(path: Path, offset: int, compression: str = "none") -> int:
    """1-based line of byte `offset` (counted only when reporting an error)."""
    count, position = 0, 0
    with inputs.open_binary(path, compression) as file:
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
    compression: str = "none",
) -> Iterator[PieceBatch]:
    """Yield the documents of `path` as batches of pieces, one window at a time.

    Args:
        delimiter: the document delimiter line (stripped), e.g. "[END_OF_DOCUMENT]".
        flag: the CLI flag that named `path`, for error messages.
        window_bytes: bytes read at a time (peak memory is a few times `max_window_bytes`).
        encoding_errors: "strict" (invalid UTF-8 raises, saying where), "replace" or "ignore"
            (checked by `PrepareConfig`).
        splittable: whether long documents may be cut at safe points (byte-level BPE only);
            otherwise only at byte bounds, once a window has grown to `max_window_bytes`.
        compression: "none", "gzip" or "zstd": the file is then read as a stream, with the same
            windows (so the same pieces and ids) as its uncompressed bytes.

    Raises:
        DocumentsError: invalid UTF-8 (strict), no delimiter line, the file shrank while read,
            a corrupt compressed stream.
    """
    needle = delimiter.strip().encode("utf-8")
    grown_limit = max_window_bytes(window_bytes)
    position, window, doc_open, delimiters_seen = 0, window_bytes, False, 0
    # open_line: the window starts inside a line (after a byte-bound cut) that is not the delimiter
    open_line, forced_total = False, 0
    with _window_source(path, flag, compression) as source:
        while True:
            buf, at_eof = source.read(position, window)
            if len(buf) == 0:
                break
            skip = 0
            if open_line:
                newline = chunking.find_byte(buf, 0x0A, backend=backend)
                skip = len(buf) if newline < 0 else newline + 1
            lines = chunking.find_delimiter_lines(buf[skip:], needle, at_eof, backend=backend) + skip
            forced = 0
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
                doc_open, open_line = False, False
            elif at_eof:
                starts, ends = np.array([0]), np.array([len(buf)])
                first, final = np.array([not doc_open], dtype=np.uint8), np.ones(1, dtype=np.uint8)
                consumed, doc_open = len(buf), False
            else:
                cut = (
                    chunking.last_safe_cut(buf, max(skip, 1), len(buf) - 1, backend=backend)
                    if splittable
                    else -1
                )
                if cut > 0 and chunking.find_byte(buf[cut:], 0x0A, backend=backend) < 0:
                    # The line at the cut runs past the window, so it may be the delimiter line
                    # (find_delimiter_lines never matches an incomplete line). Cutting there would
                    # end this non-final piece with the document's last line break, which only a
                    # final piece may drop. Cut before a complete, non-delimiter line instead.
                    cut = chunking.last_safe_cut(buf, max(skip, 1), cut - 1, backend=backend)
                if cut > 0:
                    open_line = False
                elif window < grown_limit:
                    window = min(2 * window, grown_limit)
                    continue
                else:
                    cut = forced_cut(buf, needle, open_line)
                    if cut <= 0:
                        raise DocumentsError(
                            f"{flag}: {path}: the line at byte {position} holds more than {len(buf)} "
                            "bytes of whitespace around the delimiter; raise --window_mb"
                        )
                    # the next window starts inside the cut line, which is not the delimiter
                    forced, open_line = 1, True
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
                        f"{_line_number(path, file_offset, compression)}); fix the file or pass --encoding_errors replace"
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
            del buf  # one window at a time: resident memory stays bounded
            position += consumed
            window = window_bytes
            if forced and (forced_total := forced_total + 1) == 1:
                logger.warning(
                    "%s: %s: no safe cut within %d bytes before byte %d: cut at a byte bound (ids "
                    "right at such a cut may differ from encoding the document whole; more may follow)",
                    flag, path, grown_limit, position,
                )  # fmt: skip
            if len(first):
                yield PieceBatch(flat=flat, offsets=offsets, first=first, last=final, forced_cuts=forced)
    if delimiters_seen == 0:
        raise DocumentsError(f"{flag}: no line equal to --end_of_document {delimiter.strip()!r} in {path}")
