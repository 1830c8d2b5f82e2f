"""Append-only `.npy` writer: a 1-D array of unknown final length, streamed to disk.

The header is written first with room to spare and rewritten with the final shape on `close()`,
so the file is an ordinary `.npy` (`np.load(path, mmap_mode="r")`) without ever holding the
array in memory or copying it afterwards.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # magic + length + dict, padded; a multiple of 64 as numpy aligns it


def _header(dtype: np.dtype, length: int) -> bytes:
    text = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({length},), }}"
    room = _HEADER_BYTES - len(_MAGIC) - 2 - 1
    if len(text) > room:
        raise ValueError(f"array of {length} items does not fit the reserved .npy header")
    body = (text + " " * (room - len(text)) + "\n").encode("latin1")
    return _MAGIC + len(body).to_bytes(2, "little") + body


class NpyAppender:
    """Write `append(array)` calls into one 1-D `.npy` of dtype `dtype`."""

    def __init__(self, path: str | Path, dtype: np.dtype | type) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._file = self.path.open("wb")
        self._file.write(_header(self.dtype, 0))

    def append(self, array: np.ndarray) -> None:
        if array.dtype != self.dtype or array.ndim != 1:
            raise TypeError(f"expected a 1-D {self.dtype} array, got {array.ndim}-D {array.dtype}")
        self._file.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        self.length += len(array)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_header(self.dtype, self.length))
        self._file.close()

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
