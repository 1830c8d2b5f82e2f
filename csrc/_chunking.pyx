# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native kernels of `lmfast.data.chunking` (same signatures; the Python functions there are the spec).

Every loop runs with the GIL released, so the reader, the tokenizer engine and the writer can
overlap in threads. Bounds checks are off inside the kernels only: arguments are validated here,
in Python, before each loop.
"""

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

cnp.import_array()

ctypedef fused out_t:
    uint16_t
    int32_t


cdef inline bint _is_space(uint8_t c) noexcept nogil:
    # ASCII whitespace as bytes.strip() / str.strip() see it below 0x80
    return c == 32 or (9 <= c <= 13) or (28 <= c <= 31)


cdef inline bint _is_graphic(uint8_t c) noexcept nogil:
    return 0x21 <= c <= 0x7E


def find_delimiter_lines(const uint8_t[::1] buf, bytes delimiter, bint at_eof):
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t dlen = len(delimiter)
    if dlen == 0:
        raise ValueError("delimiter must not be empty")
    cdef const uint8_t* d = delimiter
    cdef const uint8_t* base = &buf[0] if n > 0 else NULL
    cdef Py_ssize_t cap = 64, k = 0
    cdef cnp.ndarray[int64_t, ndim=2] result = np.empty((cap, 2), dtype=np.int64)
    cdef int64_t[:, ::1] res = result
    cdef Py_ssize_t start = 0, end, a, b
    cdef const uint8_t* nl
    cdef bint match
    while start < n:
        with nogil:
            # scan lines until one matches (or the buffer ends)
            match = False
            while start < n:
                nl = <const uint8_t*> memchr(base + start, 10, n - start)
                if nl == NULL:
                    if not at_eof:
                        start = n
                        break
                    end = n
                else:
                    end = (nl - base) + 1
                a = start
                b = end
                while a < b and _is_space(base[a]):
                    a += 1
                while b > a and _is_space(base[b - 1]):
                    b -= 1
                if b - a == dlen and memcmp(base + a, d, dlen) == 0:
                    match = True
                    break
                start = end
        if not match:
            break
        if k == cap:
            cap *= 2
            result = np.resize(result, (cap, 2))
            res = result
        res[k, 0] = start
        res[k, 1] = end
        k += 1
        start = end
    return np.ascontiguousarray(result[:k])


def find_byte(const uint8_t[::1] buf, int value):
    cdef Py_ssize_t n = buf.shape[0]
    cdef const void* hit = NULL
    if n == 0:
        return -1
    with nogil:
        hit = memchr(&buf[0], value, n)
    return -1 if hit == NULL else <Py_ssize_t> (<const uint8_t*> hit - &buf[0])


cdef inline Py_ssize_t _last_safe_cut(const uint8_t* buf, Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t p = hi
    cdef uint8_t before
    if p > n - 1:
        p = n - 1
    if lo < 2:
        lo = 2
    while p >= lo:
        if buf[p - 1] == 10 and _is_graphic(buf[p]):
            before = buf[p - 2]
            if _is_graphic(before) or (before == 13 and p >= 3 and _is_graphic(buf[p - 3])):
                return p
        p -= 1
    return -1


cdef inline Py_ssize_t _next_safe_cut(const uint8_t* buf, Py_ssize_t n, Py_ssize_t lo) noexcept nogil:
    cdef Py_ssize_t p = lo if lo > 2 else 2
    cdef uint8_t before
    while p < n:
        if buf[p - 1] == 10 and _is_graphic(buf[p]):
            before = buf[p - 2]
            if _is_graphic(before) or (before == 13 and p >= 3 and _is_graphic(buf[p - 3])):
                return p
        p += 1
    return -1


def last_safe_cut(const uint8_t[::1] buf, Py_ssize_t lo, Py_ssize_t hi):
    cdef Py_ssize_t n = buf.shape[0], result
    if n == 0:
        return -1
    with nogil:
        result = _last_safe_cut(&buf[0], n, lo, hi)
    return result


def gather_documents(const uint8_t[::1] buf, const int64_t[::1] starts, const int64_t[::1] ends,
                     const uint8_t[::1] final, bint crlf):
    cdef Py_ssize_t m = starts.shape[0], i, total = 0, j = 0
    cdef Py_ssize_t n = buf.shape[0]
    if ends.shape[0] != m or final.shape[0] != m:
        raise ValueError("starts, ends and final must have the same length")
    for i in range(m):
        if not (0 <= starts[i] <= ends[i] <= n):
            raise ValueError(f"range {i} [{starts[i]}, {ends[i]}) outside the buffer of {n} bytes")
        total += ends[i] - starts[i]
    cdef cnp.ndarray[uint8_t, ndim=1] flat_arr = np.empty(total, dtype=np.uint8)
    cdef cnp.ndarray[int64_t, ndim=1] off_arr = np.empty(m + 1, dtype=np.int64)
    cdef uint8_t* flat = <uint8_t*> flat_arr.data
    cdef int64_t* off = <int64_t*> off_arr.data
    cdef const uint8_t* src = &buf[0] if n > 0 else NULL
    cdef Py_ssize_t w = 0, a, b, run
    cdef const uint8_t* cr
    with nogil:
        off[0] = 0
        for i in range(m):
            a = starts[i]
            b = ends[i]
            if crlf:
                # copy runs between carriage returns with memcpy; drop each '\r' that precedes '\n'
                j = a
                while j < b:
                    cr = <const uint8_t*> memchr(src + j, 13, b - j)
                    run = (cr - src) - j if cr != NULL else b - j
                    memcpy(flat + w, src + j, run)
                    w += run
                    j += run
                    if j < b:  # at a '\r'
                        if not (j + 1 < b and src[j + 1] == 10):
                            flat[w] = 13
                            w += 1
                        j += 1
            elif b > a:
                memcpy(flat + w, src + a, b - a)
                w += b - a
            if final[i] and w > off[i] and flat[w - 1] == 10:
                w -= 1
            off[i + 1] = w
    return flat_arr[:w].copy() if w < total else flat_arr, off_arr


def blank_documents(const uint8_t[::1] flat, const int64_t[::1] offsets):
    cdef Py_ssize_t m = offsets.shape[0] - 1, i, j
    cdef cnp.ndarray[uint8_t, ndim=1] result = np.ones(max(m, 0), dtype=np.uint8)
    cdef uint8_t* res = <uint8_t*> result.data
    if m > 0 and not (0 <= offsets[0] and offsets[m] <= flat.shape[0]):
        raise ValueError("offsets outside the buffer")
    with nogil:
        for i in range(m):
            for j in range(offsets[i], offsets[i + 1]):
                if not _is_space(flat[j]):
                    res[i] = 0
                    break
    return result.view(np.bool_)


def utf8_error_offset(const uint8_t[::1] buf):
    """Same acceptance as Python's strict UTF-8 decoder (no overlongs, surrogates, > U+10FFFF)."""
    cdef Py_ssize_t n = buf.shape[0], i = 0
    cdef uint8_t c, c1
    cdef Py_ssize_t bad = -1
    cdef uint64_t word
    cdef const uint8_t* data = &buf[0] if n > 0 else NULL
    with nogil:
        while i < n:
            # ASCII fast path: 8 bytes at a time while no byte has its high bit set
            while i + 8 <= n:
                memcpy(&word, data + i, 8)
                if word & 0x8080808080808080ULL:
                    break
                i += 8
            if i >= n:
                break
            c = buf[i]
            if c < 0x80:
                i += 1
                continue
            if 0xC2 <= c <= 0xDF:
                if i + 1 < n and (buf[i + 1] & 0xC0) == 0x80:
                    i += 2
                    continue
            elif 0xE0 <= c <= 0xEF:
                if i + 1 < n:
                    c1 = buf[i + 1]
                    if ((c == 0xE0 and 0xA0 <= c1 <= 0xBF) or (c == 0xED and 0x80 <= c1 <= 0x9F)
                            or (c != 0xE0 and c != 0xED and (c1 & 0xC0) == 0x80)):
                        if i + 2 < n and (buf[i + 2] & 0xC0) == 0x80:
                            i += 3
                            continue
            elif 0xF0 <= c <= 0xF4:
                if i + 1 < n:
                    c1 = buf[i + 1]
                    if ((c == 0xF0 and 0x90 <= c1 <= 0xBF) or (c == 0xF4 and 0x80 <= c1 <= 0x8F)
                            or (0xF1 <= c <= 0xF3 and (c1 & 0xC0) == 0x80)):
                        if i + 3 < n and (buf[i + 2] & 0xC0) == 0x80 and (buf[i + 3] & 0xC0) == 0x80:
                            i += 4
                            continue
            bad = i
            break
    return bad


def split_long_pieces(const uint8_t[::1] flat, const int64_t[::1] offsets, Py_ssize_t max_piece_bytes):
    cdef Py_ssize_t m = offsets.shape[0] - 1, i, k = 0
    cdef Py_ssize_t n = flat.shape[0]
    assert max_piece_bytes >= 1
    if m >= 0 and not (0 <= offsets[0] and offsets[m] <= n):
        raise ValueError("offsets outside the buffer")
    cdef Py_ssize_t cap = offsets.shape[0] + (n // max_piece_bytes) + 1
    cdef cnp.ndarray[int64_t, ndim=1] result = np.empty(cap, dtype=np.int64)
    cdef int64_t* res = <int64_t*> result.data
    cdef const uint8_t* src = &flat[0] if n > 0 else NULL
    cdef Py_ssize_t position, end, cut
    with nogil:
        if m >= 0:
            res[0] = offsets[0]
            k = 1
        for i in range(m):
            position = offsets[i]
            end = offsets[i + 1]
            while end - position > max_piece_bytes:
                cut = _last_safe_cut(src, end, position + 1, position + max_piece_bytes)
                if cut < 0:
                    cut = _next_safe_cut(src, end, position + max_piece_bytes + 1)
                    if cut < 0:
                        break
                res[k] = cut
                k += 1
                position = cut
            res[k] = end
            k += 1
    return result[:k].copy()


def write_samples(const uint32_t[::1] ids, const int64_t[::1] piece_offsets, const uint8_t[::1] piece_first,
                  const uint8_t[::1] piece_last, long long bos, long long eos, Py_ssize_t max_len,
                  Py_ssize_t min_len, out_t[::1] out, Py_ssize_t out_pos, Py_ssize_t cur_start, bint in_doc,
                  int64_t[::1] starts_out):
    cdef Py_ssize_t m = piece_offsets.shape[0] - 1, i, j, needed
    cdef Py_ssize_t n_starts = 0, length, capacity = out.shape[0], starts_cap = starts_out.shape[0]
    cdef long long limit = 65535 if out_t is uint16_t else 2147483647
    cdef long long token
    cdef int error = 0
    cdef Py_ssize_t bad_piece = -1
    cdef long long bad_token = 0
    assert 1 <= min_len <= max_len, "checked by PrepareConfig"
    if piece_first.shape[0] != m or piece_last.shape[0] != m:
        raise ValueError("piece flags must have one entry per piece")
    if m > 0 and not (0 <= piece_offsets[0] and piece_offsets[m] <= ids.shape[0]):
        raise ValueError("piece offsets outside ids")
    needed = out_pos + (piece_offsets[m] - piece_offsets[0] if m > 0 else 0) + 2 * m
    if needed > capacity:
        raise ValueError(f"out holds {capacity} tokens, {needed} may be written")
    if starts_cap < needed // max_len + m + 1:
        raise ValueError("starts_out is too small")
    if (bos > limit) or (eos > limit):
        raise ValueError(f"special token id does not fit {np.asarray(out).dtype} (max {limit})")
    with nogil:
        for i in range(m):
            if piece_first[i]:
                if in_doc:
                    error = 1
                    bad_piece = i
                    break
                in_doc = True
                cur_start = out_pos
                if bos >= 0:
                    out[out_pos] = <out_t> bos
                    out_pos += 1
                    if out_pos - cur_start == max_len:
                        starts_out[n_starts] = cur_start
                        n_starts += 1
                        cur_start = out_pos
            elif not in_doc:
                error = 2
                bad_piece = i
                break
            for j in range(piece_offsets[i], piece_offsets[i + 1]):
                token = ids[j]
                if token > limit:
                    error = 3
                    bad_token = token
                    break
                out[out_pos] = <out_t> token
                out_pos += 1
                if out_pos - cur_start == max_len:
                    starts_out[n_starts] = cur_start
                    n_starts += 1
                    cur_start = out_pos
            if error:
                break
            if piece_last[i]:
                if eos >= 0:
                    out[out_pos] = <out_t> eos
                    out_pos += 1
                    if out_pos - cur_start == max_len:
                        starts_out[n_starts] = cur_start
                        n_starts += 1
                        cur_start = out_pos
                length = out_pos - cur_start
                if length >= min_len:
                    starts_out[n_starts] = cur_start
                    n_starts += 1
                else:
                    out_pos = cur_start
                cur_start = out_pos
                in_doc = False
    if error == 1:
        raise ValueError(f"piece {bad_piece} starts a document while another is open")
    if error == 2:
        raise ValueError(f"piece {bad_piece} continues a document that was never started")
    if error == 3:
        raise ValueError(f"token id {bad_token} does not fit {np.asarray(out).dtype} (max {limit})")
    return out_pos, cur_start, bool(in_doc), n_starts
