# distutils: language = c++
"""Native SentencePiece BPE (csrc/spbpe.h); the reference is lmfast.data.spbpe.SentencePieceBpe.encode.

One `Kernel` holds the model and one encoder (with its word cache) per worker; worker w may be
used by one thread at a time, and different workers run in parallel without the GIL.
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

    cdef cppclass Encoder:
        Encoder(const Model* model, size_t cache_slots)
        int64_t encode(const uint8_t* data, const int64_t* offsets, int64_t n, uint32_t* ids,
                       int64_t* out_offsets) nogil


cdef bint _nondecreasing(const int64_t[::1] offsets, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(first, last):
        if offsets[i + 1] < offsets[i]:
            return False
    return True


cdef class Kernel:
    cdef Model* model
    cdef vector[Encoder*] encoders

    def __cinit__(self, dict char_ids, byte_ids, merges, int prepend, bint cut_every_space,
                  bint cut_around_bytes, int workers, size_t cache_slots=1 << 19):
        """char_ids: codepoint -> id; byte_ids: 256 ids; merges: (left, right, rank, new id) rows;
        cache_slots: each worker's word cache at most (a power of two >= 2, 32 bytes a slot)."""
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
        for i in range(max(workers, 1)):
            self.encoders.push_back(new Encoder(self.model, cache_slots))

    def __dealloc__(self):
        for i in range(self.encoders.size()):
            del self.encoders[i]
        del self.model

    @property
    def workers(self) -> int:
        return self.encoders.size()

    def encode(self, int worker, const uint8_t[::1] flat, const int64_t[::1] offsets, Py_ssize_t first,
               Py_ssize_t last):
        """Pieces first..last-1 of (flat, offsets): (uint32 ids, int64 offsets from 0, len last-first+1)."""
        if not 0 <= worker < <int>self.encoders.size():
            raise ValueError(f"worker {worker} out of range")
        if not 0 <= first <= last < offsets.shape[0]:
            raise ValueError("piece range out of bounds")
        if last > first and (offsets[first] < 0 or offsets[last] > flat.shape[0]):
            raise ValueError("offsets out of bounds")
        cdef int64_t count = last - first
        if not _nondecreasing(offsets, first, last):
            raise ValueError("offsets decrease")
        out_offsets = np.zeros(count + 1, dtype=np.int64)
        cdef int64_t[::1] out_view = out_offsets
        cdef Encoder* encoder = self.encoders[worker]
        cdef const uint8_t* data = &flat[0] if flat.shape[0] else NULL
        # room for the most ids the pieces can give: one per byte, plus a prepended "▁" each
        result = np.empty((offsets[last] - offsets[first]) + count if count else 0, dtype=np.uint32)
        cdef uint32_t[::1] result_view = result
        cdef int64_t written = 0
        if count:
            with nogil:
                written = encoder.encode(data + offsets[first], &offsets[first], count, &result_view[0],
                                         &out_view[0])
        return result[:written], out_offsets
