"""The input files of a prepare run: paths, globs and directories -> a sorted list of `InputFile`.

Why one module: every later step (sharding, the valid split, description.json, merge) relies on
the same deterministic order, so it is decided once, here. Order is the sorted path strings
(code point order, not the shell's locale); a file named twice, through a link or a link loop, is
read once (`expand`). The format follows the name:
`.jsonl`/`.ndjson` are JSON lines (one document a record), `.parquet` is Parquet (one document a
row), anything else is delimited plain text; `.gz` and `.zst` after it are read as streams.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from lmfast.flags import UserError

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
RECORD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# the names a directory contributes (an explicitly named file of any other name is text)
DIRECTORY_SUFFIXES = (".txt", ".text", ".jsonl", ".ndjson", ".parquet")
_GLOB_CHARS = set("*?[")
logger = logging.getLogger(__name__)


class InputError(UserError):
    """An input path that cannot be used; the message names the flag and the path."""


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, how to read it, and (once hashed) what it holds."""

    path: Path
    format: str  # "text", "jsonl" or "parquet"
    compression: str  # "none", "gzip" or "zstd"
    size: int

    def record(self, split: str) -> dict[str, object]:
        """The description.json entry: path, format, compression, size and content hash."""
        return {
            "split": split,
            "path": str(self.path),
            "format": self.format,
            "compression": self.compression,
            "size": self.size,
            "sha256": file_sha256(self.path),
        }


def classify(path: Path) -> tuple[str, str]:
    """(format, compression) from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1], "none") if suffixes else "none"
    if compression != "none":
        suffixes = suffixes[:-1]
    fmt = RECORD_SUFFIXES.get(suffixes[-1], "text") if suffixes else "text"
    return fmt, compression


def _in_directory(directory: Path, skipped: list[str]) -> list[Path]:
    """The directory's files of the known suffixes, recursively. A directory link is followed only
    to a directory not yet walked (by real path), so a link loop (`self -> .`) is walked once and
    noted in `skipped`."""
    found = []
    walked = {os.path.realpath(directory)}
    for root, dirs, files in os.walk(directory, followlinks=True):
        kept = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(root, name))
            if name.startswith("."):
                continue
            if real in walked:
                skipped.append(f"{os.path.join(root, name)} (a link to a directory already read)")
                continue
            walked.add(real)
            kept.append(name)
        dirs[:] = kept
        for name in files:
            path = Path(root) / name
            stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in COMPRESSIONS else name
            if not name.startswith(".") and stem.lower().endswith(DIRECTORY_SUFFIXES):
                found.append(path)
    return found


def _glob(text: str) -> list[Path]:
    """The files a glob matches. pathlib's `**` does not descend into directory links, so a link
    loop cannot trap it; hidden names match only a pattern part that starts with a dot (as glob)."""
    parts = Path(text).parts
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    root = Path(*parts[:first]) if first else Path()
    pattern = Path(*parts[first:])
    hidden_ok = any(part.startswith(".") for part in pattern.parts)
    return [
        path
        for path in root.glob(str(pattern))
        if path.is_file() and (hidden_ok or not any(p.startswith(".") for p in path.relative_to(root).parts))
    ]


def expand(arguments: Sequence[Path | str], flag: str) -> list[InputFile]:
    """Every file the arguments name: a file, a glob (`**` recursive) or a directory (its files of
    the known suffixes, hidden ones skipped, recursively). Each file is read once: files are told
    apart by their real path (links resolved), the one kept named by its smallest path, and what
    was skipped (duplicates, link loops) is logged in one line. Sorted by path.

    Raises:
        InputError: nothing given, a path that does not exist, a glob or directory matching no
            file, an unreadable or empty file, or a compressed Parquet name.
    """
    if not arguments:
        raise InputError(f"{flag}: no input file given")
    paths: dict[str, Path] = {}  # real path -> the path that names it
    skipped: list[str] = []
    for argument in arguments:
        text = str(argument)
        if _GLOB_CHARS & set(text) and not Path(text).exists():
            matches = _glob(text)
            if not matches:
                raise InputError(f"{flag}: no file matches {text!r}")
        elif Path(text).is_dir():
            matches = _in_directory(Path(text), skipped)
            if not matches:
                raise InputError(f"{flag}: directory {text} holds no {'/'.join(DIRECTORY_SUFFIXES)} file")
        else:
            matches = [Path(text)]
        for path in matches:
            real = os.path.realpath(path)
            kept = paths.get(real)
            if kept is not None and os.path.normpath(kept) != os.path.normpath(path):
                first, second = sorted((kept, path), key=os.path.normpath)
                skipped.append(f"{second} (the same file as {first})")
                path = first
            paths[real] = path
    if skipped:
        logger.warning(
            "%s: read each file once; skipped %d: %s%s",
            flag,
            len(skipped),
            "; ".join(skipped[:3]),
            "; ..." if len(skipped) > 3 else "",
        )
    return [_input_file(path, flag) for path in sorted(paths.values(), key=os.path.normpath)]


def _input_file(path: Path, flag: str) -> InputFile:
    if not path.exists():
        raise InputError(f"{flag}: file not found: {path}")
    if not path.is_file():
        raise InputError(f"{flag}: not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{flag}: permission denied: {path}")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{flag}: file is empty: {path}")
    fmt, compression = classify(path)
    if fmt == "parquet" and compression != "none":
        raise InputError(f"{flag}: {path}: Parquet compresses itself; give the .parquet file")
    return InputFile(path, fmt, compression, size)


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """The SHA-256 of the file as stored (compressed files: of the compressed bytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def open_binary(path: Path, compression: str) -> IO[bytes]:
    """The file's (decompressed) bytes as a stream."""
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        zstandard = require("zstandard", path)

        return io.BufferedReader(ZstdFrames(path, zstandard))
    return path.open("rb")


class ZstdFrames(io.RawIOBase):
    """A .zst file's bytes, every frame of it. A file that ends inside a frame raises EOFError
    naming the cut, where zstandard's own reader stops quietly there (a two-frame file cut in its
    second frame read as half the documents, one cut frame as none)."""

    def __init__(self, path: Path, zstandard: Any) -> None:
        self._file = path.open("rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: Any = None  # the frame being decompressed, None between frames
        self._pending = b""  # compressed bytes after the last frame's end, not yet fed
        self._out = bytearray()
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out and not self._ended:
            self._feed()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        del self._out[:n]
        return n

    def _feed(self) -> None:
        data, self._pending = self._pending or self._file.read(1 << 20), b""
        if not data:
            if self._frame is not None:
                raise EOFError(f"truncated: the file ends inside a zstd frame, at byte {self._file.tell()}")
            self._ended = True
            return
        if self._frame is None:
            self._frame = self._dctx.decompressobj()
        self._out += self._frame.decompress(data)
        if self._frame.eof:
            self._pending, self._frame = self._frame.unused_data, None

    def close(self) -> None:
        self._file.close()
        super().close()


def require(module: str, path: Path):  # noqa: ANN201 (a module)
    """Import an optional dependency of an input format, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{path}: reading it needs {module}: pip install 'lmfast[corpus]'") from None


def shard_slice(files: Sequence[InputFile], num_shards: int, shard_index: int) -> list[int]:
    """Indices of the files of shard `shard_index`: contiguous runs of the sorted list, balanced by
    bytes (file k belongs to the shard holding the middle byte of its range). Contiguous, so the
    shards' outputs concatenated in shard order are exactly the single run's."""
    total = sum(f.size for f in files)
    chosen, before = [], 0
    for k, f in enumerate(files):
        middle = before + f.size / 2
        if min(int(middle * num_shards / total), num_shards - 1) == shard_index:
            chosen.append(k)
        before += f.size
    return chosen


def valid_documents(file_index: int | np.ndarray, document_index: np.ndarray, fraction: float) -> np.ndarray:
    """Which documents `--valid_fraction` holds out: splitmix64 of (file index, document index)
    below `fraction` of 2**64. A pure function of the position, so shards agree with one run."""
    with np.errstate(over="ignore"):
        z = (np.asarray(file_index).astype(np.uint64) << np.uint64(40)) ^ document_index.astype(np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z < np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))


class StreamSource:
    """Windows of a (decompressing) stream, read forward only: `read(position, length)` may repeat
    or grow the last window, as `documents.iter_pieces` does, so bytes from the last position on
    are kept (one window plus one byte)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._base = 0  # file position of _buffer[0]
        self._ended = False

    def read(self, position: int, length: int) -> tuple[np.ndarray, bool]:
        """(bytes at position, up to length), whether the stream ends right after them."""
        if position < self._base:
            raise ValueError("StreamSource reads forward only")
        del self._buffer[: position - self._base]
        self._base = position
        while len(self._buffer) <= length and not self._ended:
            chunk = self._stream.read(max(length + 1 - len(self._buffer), 1 << 16))
            if not chunk:
                self._ended = True
            self._buffer += chunk
        data = np.frombuffer(bytes(self._buffer[:length]), dtype=np.uint8).copy()
        return data, self._ended and len(self._buffer) <= length


def read_prefix(path: Path, compression: str, max_bytes: int) -> bytes:
    """The first `max_bytes` (decompressed) bytes."""
    with open_binary(path, compression) as stream:
        return stream.read(max_bytes)


def decompression_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a corrupt compressed stream raises (gzip, zlib, zstandard)."""
    import zlib

    errors: list[type[BaseException]] = [gzip.BadGzipFile, zlib.error, EOFError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)
