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
        threads: int,
        cache_slots: int = ...,
    ) -> None: ...
    @property
    def threads(self) -> int: ...
    def encode(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
