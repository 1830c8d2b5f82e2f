"""Types of the Cython kernels built from csrc/_chunking.pyx; lmfast.data.chunking documents each one."""

import numpy as np

def find_delimiter_lines(buf: np.ndarray, delimiter: bytes, at_eof: bool) -> np.ndarray: ...
def find_byte(buf: np.ndarray, value: int) -> int: ...
def last_safe_cut(buf: np.ndarray, lo: int, hi: int) -> int: ...
def gather_documents(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, final: np.ndarray, crlf: bool
) -> tuple[np.ndarray, np.ndarray]: ...
def blank_documents(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray: ...
def utf8_error_offset(buf: np.ndarray) -> int: ...
def split_long_pieces(flat: np.ndarray, offsets: np.ndarray, max_piece_bytes: int) -> np.ndarray: ...
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
) -> tuple[int, int, bool, int]: ...
