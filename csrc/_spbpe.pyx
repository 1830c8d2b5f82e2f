# distutils: language = c++
"""Native SentencePiece BPE (csrc/spbpe.h); the reference is lmfast.data.spbpe.SentencePieceBpe.encode.

One `Kernel` holds the model, a word cache its threads share, and one encoder per thread; an
encode runs them over ranges of the pieces without the GIL (csrc/spbpe.h `encode_parallel`).
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint32_t
from libcpp cimport bool as cbool
from libcpp.vector cimport vector


cdef extern from "spbpe.h" namespace "spbpe":
    cdef cppclass Model:
        int prepend
        cbool cut_every_space
        cbool cut_around_bytes
        void finish()
        void add_char(uint32_t codepoint, uint32_t id)
        void set_byte(int byte, uint32_t id)
        void add_merge(uint32_t left, uint32_t right, uint32_t rank, uint32_t new_id)

    cdef cppclass SharedCache:
        SharedCache(size_t max_slots)

    cdef cppclass Encoder:
        Encoder(const Model* model, SharedCache* cache)

    int64_t encode_parallel(const vector[Encoder*]& encoders, SharedCache& cache, const uint8_t* data,
                            const int64_t* offsets, int64_t n, uint32_t* ids, int64_t* out_offsets) except + nogil


cdef bint _nondecreasing(const int64_t[::1] offsets, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(first, last):
        if offsets[i + 1] < offsets[i]:
            return False
    return True


cdef class Kernel:
    cdef Model* model
    cdef SharedCache* cache
    cdef vector[Encoder*] encoders

    def __cinit__(self, dict char_ids, byte_ids, merges, int prepend, bint cut_every_space,
                  bint cut_around_bytes, int threads, size_t cache_slots=1 << 19):
        """char_ids: codepoint -> id; byte_ids: 256 ids; merges: (left, right, rank, new id) rows;
        cache_slots: the shared word cache at most (a power of two >= 2, 32 bytes a slot)."""
        if cache_slots < 2 or cache_slots & (cache_slots - 1):
            raise ValueError(f"cache_slots must be a power of two >= 2, got {cache_slots}")
        self.model = new Model()
        self.model.prepend = prepend
        self.model.cut_every_space = cut_every_space
        self.model.cut_around_bytes = cut_around_bytes
        for codepoint, token_id in char_ids.items():
            self.model.add_char(codepoint, token_id)
        for byte in range(256):
            self.model.set_byte(byte, byte_ids[byte])
        cdef const uint32_t[:, ::1] rows = np.ascontiguousarray(merges, dtype=np.uint32).reshape(-1, 4)
        cdef Py_ssize_t i
        for i in range(rows.shape[0]):
            self.model.add_merge(rows[i, 0], rows[i, 1], rows[i, 2], rows[i, 3])
        self.model.finish()
        self.cache = new SharedCache(cache_slots)
        for i in range(max(threads, 1)):
            self.encoders.push_back(new Encoder(self.model, self.cache))

    def __dealloc__(self):
        for i in range(self.encoders.size()):
            del self.encoders[i]
        del self.cache
        del self.model

    @property
    def threads(self) -> int:
        return self.encoders.size()

    def encode(self, const uint8_t[::1] flat, const int64_t[::1] offsets):
        """Pieces flat[offsets[i]:offsets[i+1]]: (uint32 ids, int64 offsets from 0, len(offsets)).

        One thread per range of pieces, without the GIL; one call at a time per Kernel.
        """
        cdef Py_ssize_t n = offsets.shape[0] - 1
        if n < 0:
            raise ValueError("offsets is empty")
        if n > 0 and (offsets[0] < 0 or offsets[n] > flat.shape[0]):
            raise ValueError("offsets out of bounds")
        if not _nondecreasing(offsets, 0, n):
            raise ValueError("offsets decrease")
        out_offsets = np.empty(n + 1, dtype=np.int64)
        cdef int64_t[::1] out_view = out_offsets
        # room for the most ids the pieces can give: one per byte, plus a prepended "▁" each
        result = np.empty((offsets[n] - offsets[0]) + n if n else 1, dtype=np.uint32)
        cdef uint32_t[::1] result_view = result
        cdef const uint8_t* data = &flat[0] if flat.shape[0] else NULL
        cdef int64_t written = 0
        out_view[0] = 0
        if n:
            with nogil:
                written = encode_parallel(self.encoders, self.cache[0], data + offsets[0], &offsets[0], n,
                                          &result_view[0], &out_view[0])
        # shrunk in place (realloc: the untouched tail is given back, nothing is copied or faulted in)
        del result_view
        result.resize(max(written, 1), refcheck=False)
        return result[:written], out_offsets
