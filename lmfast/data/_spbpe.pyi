"""Types of the native SentencePiece BPE built from csrc/_spbpe.pyx; lmfast.data.spbpe documents it."""

from collections.abc import Sequence

import numpy as np

class Kernel:
    def __init__(
        self,
        char_ids: dict[int, int],
        byte_ids: Sequence[int],
        merges: np.ndarray,
        prepend: int,
        cut_every_space: bool,
        cut_around_bytes: bool,
        workers: int,
        cache_slots: int = ...,
    ) -> None: ...
    @property
    def workers(self) -> int: ...
    def encode(
        self, worker: int, flat: np.ndarray, offsets: np.ndarray, first: int, last: int
    ) -> tuple[np.ndarray, np.ndarray]: ...
