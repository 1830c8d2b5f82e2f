# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native kernel of `lmfast.export.quantize._searched` (the NumPy function there is the spec).

Bit for bit the reference: every float32 operation is the one NumPy performs, in its order, and
each sum over a block is NumPy's pairwise summation (eight running sums for 8..128 elements,
halves above). Built with -ffp-contract=off so that no multiply-add is fused. The loop runs
with the GIL released, so the caller can split the rows over threads.
"""

import numpy as np

from libc.math cimport copysignf, fabsf, rintf, sqrtf
from libc.stdint cimport uint8_t


cdef float _pairwise(const float* a, Py_ssize_t n) noexcept nogil:
    # numpy's @TYPE@_pairwise_sum for a contiguous float32 run
    cdef float res, r0, r1, r2, r3, r4, r5, r6, r7
    cdef Py_ssize_t i, half
    if n < 8:
        res = -0.0
        for i in range(n):
            res += a[i]
        return res
    if n <= 128:
        r0 = a[0]
        r1 = a[1]
        r2 = a[2]
        r3 = a[3]
        r4 = a[4]
        r5 = a[5]
        r6 = a[6]
        r7 = a[7]
        i = 8
        while i < n - (n % 8):
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(a, half) + _pairwise(a + half, n - half)


cdef inline float _clip(float v, float top) noexcept nogil:
    # np.clip(v, 0, top)
    v = v if v > 0 else 0
    return v if v < top else top


cdef inline float _clip_rint(float v, float top) noexcept nogil:
    # np.clip(np.rint(v), 0, top), clipped first (the same for every v but NaN, which the
    # reference never rounds): on [0, 2^23) adding and taking away 2^23 rounds half to even as
    # np.rint does (the sum's spacing is 1, 2^23 is even) without a call to rintf
    v = _clip(v, top)
    return (v + <float> 8388608.0) - <float> 8388608.0


cdef inline float _at_least(float v, float floor) noexcept nogil:
    # np.maximum(v, floor)
    return v if v > floor else floor


cdef float _error(
    const float* x, const float* weights, const float* centered, float scale, float* scratch, Py_ssize_t n
) noexcept nogil:
    # _weighted_error: the pairwise sum of (weights * r) * r, r = x - centered * scale
    cdef Py_ssize_t i
    cdef float r
    for i in range(n):
        r = x[i] - centered[i] * scale
        scratch[i] = weights[i] * r * r
    return _pairwise(scratch, n)


cdef void _block(
    const float* x, const float* channel, Py_ssize_t n, int bits, const float* steps, Py_ssize_t nsteps,
    float* weights, float* shifted, float* levels, float* best, float* p1, float* p2,
    uint8_t* out_levels, float* out_scale, uint8_t* out_zero,
) noexcept nogil:
    cdef float top = <float> ((1 << bits) - 1)
    cdef float tiny = <float> 1e-30
    cdef Py_ssize_t i, s, it
    cdef float sigma2, low, high, span, scale, safe, zero, best_scale, best_zero, best_error, c
    cdef float sum_w, sum_wx, inverse, sum_wl, sum_wll, sum_wlx, det, minimum, norm, refit, error
    cdef bint ok
    for i in range(n):
        p1[i] = x[i] * x[i]
    sigma2 = <float> 2.0 * <float> (<double> _pairwise(p1, n) / <double> n)
    low = x[0]
    high = x[0]
    for i in range(1, n):
        low = x[i] if x[i] < low else low
        high = x[i] if x[i] > high else high
    low = low if low < 0 else 0
    high = high if high > 0 else 0
    for i in range(n):
        weights[i] = channel[i] * sqrtf(sigma2 + p1[i])
    span = high - low if high > low else 1
    # the min/max rounding (ONNX Runtime's rule, quantize._asymmetric) is the first candidate
    scale = (high - low) / top
    safe = 1 if scale == 0 else scale
    zero = _clip_rint(-low / safe, top)
    for i in range(n):
        best[i] = _clip(rintf(x[i] / safe) + zero, top)
        levels[i] = best[i] - zero
    best_scale = scale
    best_zero = zero
    best_error = _error(x, weights, levels, scale, p2, n)
    sum_w = _pairwise(weights, n)
    for i in range(n):
        p1[i] = weights[i] * x[i]
        shifted[i] = x[i] - low
    sum_wx = _pairwise(p1, n)
    for s in range(nsteps):
        inverse = (top + steps[s]) / span
        for i in range(n):
            levels[i] = _clip_rint(shifted[i] * inverse, top)
            p1[i] = weights[i] * levels[i]
        sum_wl = _pairwise(p1, n)
        for i in range(n):
            p2[i] = p1[i] * levels[i]
        sum_wll = _pairwise(p2, n)
        for i in range(n):
            p2[i] = p1[i] * x[i]
        sum_wlx = _pairwise(p2, n)
        det = sum_w * sum_wll - sum_wl * sum_wl
        ok = det > tiny * _at_least(sum_w * sum_wll, tiny)
        if ok:
            scale = (sum_w * sum_wlx - sum_wl * sum_wx) / det
            minimum = (sum_wll * sum_wx - sum_wl * sum_wlx) / det
        else:
            scale = 0
            minimum = 0
        ok = ok and scale > 0
        if not ok:
            scale = 1
        zero = _clip_rint(-minimum / scale, top)
        for it in range(2):  # re-round on the snapped zero point, refit the scale
            for i in range(n):
                c = _clip_rint(x[i] / scale + zero, top) - zero
                levels[i] = c
                p1[i] = weights[i] * c
                p2[i] = p1[i] * c
            norm = _pairwise(p2, n)
            for i in range(n):
                p2[i] = p1[i] * x[i]
            refit = _pairwise(p2, n) / _at_least(norm, tiny)
            if norm > 0 and refit > 0:
                scale = refit
        error = _error(x, weights, levels, scale, p2, n)
        if ok and error < best_error:
            for i in range(n):
                best[i] = levels[i] + zero
            best_scale = scale
            best_zero = zero
            best_error = error
    for i in range(n):
        out_levels[i] = <uint8_t> best[i]
    out_scale[0] = best_scale
    out_zero[0] = <uint8_t> best_zero


def searched_blocks(const float[:, :, ::1] x, const float[:, ::1] channel, int bits, const float[::1] steps):
    """`quantize._searched(x, bits, channel)` for x (rows, blocks, block_size) float32."""
    cdef Py_ssize_t rows = x.shape[0], blocks = x.shape[1], n = x.shape[2]
    if channel.shape[0] != blocks or channel.shape[1] != n:
        raise ValueError("channel must be (blocks, block_size)")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    levels_out = np.empty((rows, blocks, n), np.uint8)
    scales_out = np.empty((rows, blocks), np.float32)
    zeros_out = np.empty((rows, blocks), np.uint8)
    scratch = np.empty((6, n), np.float32)
    cdef uint8_t[:, :, ::1] lv = levels_out
    cdef float[:, ::1] sc = scales_out
    cdef uint8_t[:, ::1] zp = zeros_out
    cdef float[:, ::1] buf = scratch
    cdef Py_ssize_t r, b
    if rows == 0 or blocks == 0 or n == 0:
        return levels_out, scales_out, zeros_out
    with nogil:
        for r in range(rows):
            for b in range(blocks):
                _block(
                    &x[r, b, 0], &channel[b, 0], n, bits, &steps[0], steps.shape[0],
                    &buf[0, 0], &buf[1, 0], &buf[2, 0], &buf[3, 0], &buf[4, 0], &buf[5, 0],
                    &lv[r, b, 0], &sc[r, b], &zp[r, b],
                )
    return levels_out, scales_out, zeros_out


cdef inline double _clip_rint64(double v, double top) noexcept nogil:
    # np.clip(np.rint(v), 0, top) in float64: clipped first, then rounded half to even by
    # adding and taking away 2^52 (the sum's spacing is 1 on [2^52, 2^53))
    v = v if v > 0 else 0
    v = v if v < top else top
    return (v + 4503599627370496.0) - 4503599627370496.0


def gptq_rows(
    double[:, ::1] work,
    const double[:, ::1] factor,
    Py_ssize_t start,
    Py_ssize_t stop,
    const double[::1] safe,
    const double[::1] zero,
    const double[::1] scale,
    int bits,
    uint8_t[:, :] levels,
    double[:, ::1] errors,
    Py_ssize_t first=0,
    Py_ssize_t last=-1,
):
    """The row loop of one block of `quantize.gptq_levels`: rows start..stop-1 of `work` (K, N)
    rounded in order on their block's scale and zero point, each row's error divided by its
    diagonal of `factor` into `errors` (stop - start, N) and subtracted from the block's later
    rows; `levels` (N, stop - start) receives the levels. Only columns first..last-1 (last -1:
    all): the columns are independent, so threads can share a block."""
    cdef Py_ssize_t n = work.shape[1], row, later, c
    cdef double top = <double> ((1 << bits) - 1), level, diagonal, f
    if stop > work.shape[0] or start < 0 or stop < start or levels.shape[1] < stop - start:
        raise ValueError("rows out of range")
    if safe.shape[0] != n or zero.shape[0] != n or scale.shape[0] != n or levels.shape[0] != n:
        raise ValueError("per-column arrays must have one value per column of work")
    if errors.shape[0] < stop - start or errors.shape[1] != n:
        raise ValueError("errors must be (rows, columns)")
    if last < 0:
        last = n
    if first < 0 or last > n or first > last:
        raise ValueError("columns out of range")
    if factor.shape[0] < stop or factor.shape[1] < stop:
        raise ValueError("factor must cover the rows")
    with nogil:
        for row in range(start, stop):
            diagonal = factor[row, row]
            for c in range(first, last):
                level = _clip_rint64(work[row, c] / safe[c] + zero[c], top)
                levels[c, row - start] = <uint8_t> level
                errors[row - start, c] = (work[row, c] - (level - zero[c]) * scale[c]) / diagonal
            for later in range(row + 1, stop):
                f = factor[row, later]
                for c in range(first, last):
                    work[later, c] = work[later, c] - f * errors[row - start, c]


cdef inline float _clip_rint_signed(float v, float low, float high) noexcept nogil:
    # np.clip(np.rint(v), low, high) for integer bounds within +-2^22, clipped first: adding and
    # taking away 1.5 * 2^23 rounds half to even (spacing 1, an even offset); copysignf keeps
    # the sign of a zero as rint does
    v = v if v > low else low
    v = v if v < high else high
    return copysignf((v + <float> 12582912.0) - <float> 12582912.0, v)


cdef void _symmetric_block(
    const float* x, Py_ssize_t n, int bits, bint least_squares, const float* steps, Py_ssize_t nsteps,
    float* best, float* candidate, float* scratch, uint8_t* out_levels, float* out_scale,
) noexcept nogil:
    cdef float half = <float> (1 << (bits - 1))
    cdef float low = -half, high = half - 1, tiny = <float> 1e-30
    cdef float extreme = x[0], magnitude = fabsf(x[0]), safe, best_scale, best_error, cs, dot, norm
    cdef float scale, error, r
    cdef Py_ssize_t i, s
    for i in range(1, n):
        if fabsf(x[i]) > magnitude:  # the first of the largest, as argmax
            magnitude = fabsf(x[i])
            extreme = x[i]
    safe = 1 if extreme == 0 else extreme
    best_scale = safe / -half
    for i in range(n):
        best[i] = _clip_rint_signed(x[i] / best_scale, low, high)
    if least_squares:
        for i in range(n):
            r = x[i] - best[i] * best_scale
            scratch[i] = r * r
        best_error = _pairwise(scratch, n)
        for s in range(nsteps):
            if steps[s] == 0:
                continue
            cs = safe / -(half + steps[s])
            for i in range(n):
                candidate[i] = _clip_rint_signed(x[i] / cs, low, high)
                scratch[i] = x[i] * candidate[i]
            dot = _pairwise(scratch, n)
            for i in range(n):
                scratch[i] = candidate[i] * candidate[i]
            norm = _pairwise(scratch, n)
            scale = dot / _at_least(norm, tiny) if norm > 0 else best_scale
            for i in range(n):
                r = x[i] - candidate[i] * scale
                scratch[i] = r * r
            error = _pairwise(scratch, n)
            if error < best_error:
                for i in range(n):
                    best[i] = candidate[i]
                best_scale = scale
                best_error = error
    for i in range(n):
        out_levels[i] = <uint8_t> (best[i] + half)
    out_scale[0] = 0 if extreme == 0 else best_scale


def symmetric_blocks(const float[:, :, ::1] x, int bits, bint least_squares, const float[::1] steps):
    """`quantize._symmetric(x, bits, least_squares)` for x (rows, blocks, block_size) float32."""
    cdef Py_ssize_t rows = x.shape[0], blocks = x.shape[1], n = x.shape[2]
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    levels_out = np.empty((rows, blocks, n), np.uint8)
    scales_out = np.empty((rows, blocks), np.float32)
    scratch = np.empty((3, n), np.float32)
    cdef uint8_t[:, :, ::1] lv = levels_out
    cdef float[:, ::1] sc = scales_out
    cdef float[:, ::1] buf = scratch
    cdef Py_ssize_t r, b
    if rows == 0 or blocks == 0 or n == 0:
        return levels_out, scales_out
    with nogil:
        for r in range(rows):
            for b in range(blocks):
                _symmetric_block(
                    &x[r, b, 0], n, bits, least_squares, &steps[0], steps.shape[0],
                    &buf[0, 0], &buf[1, 0], &buf[2, 0], &lv[r, b, 0], &sc[r, b],
                )
    return levels_out, scales_out
