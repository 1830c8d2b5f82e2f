"""Block-wise weight-only quantization into ONNX Runtime's MatMulNBits layout.

ONNX Runtime's own `MatMulNBitsQuantizer` rounds each block to nearest on the scale
`max / -2^(bits-1)` (the signed value of largest magnitude lands on the lowest level), exactly
llama.cpp's q4_0/q8_0 rule. Round-to-nearest on that one scale is often not the closest the
block's levels can come to its weights: `least_squares` tries 17 scales around it and keeps, per
block, the rounding whose least-squares scale leaves the smallest squared error (llama.cpp's
`make_qx_quants` idea, without an importance matrix). The layout, size, kernel and speed are the
same; only the chosen levels and scales differ.

`searched` is the k-quant-class asymmetric format (llama.cpp's `make_qkx2/3_quants` idea in
MatMulNBits' layout): per block, 21 candidate ranges are rounded, a (weighted) least-squares
scale and min are fitted to each rounding, the min is snapped to the integer zero point the
kernel stores and the scale refitted; the candidate with the smallest weighted squared error wins.
The weights of that error are an importance per input channel (the mean squared activation that
multiplies it, from calibration data: `lmfast.export.calibration`) times llama.cpp's
sqrt(sigma^2 + w^2) emphasis on large weights; without calibration the importance is 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

SEARCH_STEPS = np.linspace(-1.0, 1.0, 17, dtype=np.float32)
"""Offsets to the level count the symmetric scale divides by: 2^(bits-1) + step (0 is RTN)."""

SEARCH_RANGE_STEPS = np.linspace(-1.0, 1.0, 21, dtype=np.float32)
"""`searched`: offsets to the level count the block's range divides by (llama.cpp's rmin..rmin+nstep*rdelta)."""

ROUNDINGS = ("least_squares", "nearest", "searched")

COLUMNS_PER_CHUNK = 4096
"""Output columns quantized at a time: bounds the float32 temporaries of a vocabulary matrix."""


def quantize_blocks(
    weight: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool = True,
    least_squares: bool = True,
    importance: np.ndarray | None = None,
    searched: bool = False,
    gram: np.ndarray | None = None,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' B, scales and zero points for a MatMul weight (K, N), blocks along K.

    `searched` (asymmetric only) picks each block's scale and zero point by the weighted search
    described above, with `importance` (K,) the weight of each input channel's error. With `gram`
    (K, K), the inputs' mean x x^T from calibration, the blocks are rounded GPTQ's way
    (`gptq_levels`): each input row's rounding error is compensated on the rows not yet rounded.
    `factor`: `gptq_factor` of that Gram padded to whole blocks, when the caller has it already.

    Returns:
        packed (N, blocks, block_size * bits / 8) uint8, low nibble first at 4 bits;
        scales (N, blocks) float32; zero points (N, ceil(blocks * bits / 8)) uint8 packed the same
        way, or None where symmetric (the kernel's implied 2^(bits-1)).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if searched and symmetric:
        raise ValueError("the searched rounding is asymmetric: pass symmetric=False")
    k, n = weight.shape
    if importance is not None and importance.shape != (k,):
        raise ValueError(f"importance must have one value per input channel ({k}), got {importance.shape}")
    if gram is not None:
        if not searched:
            raise ValueError("GPTQ rounding (gram) is implemented for the searched format")
        if gram.shape != (k, k):
            raise ValueError(f"gram must be ({k}, {k}), got {gram.shape}")
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = weight
    channel = np.ones(blocks * block_size, np.float32)  # padding rows weigh nothing: they are 0
    channel[:k] = 1.0 if importance is None else np.maximum(importance, 0.0)
    channel = channel.reshape(blocks, block_size)
    levels = np.empty((n, blocks, block_size), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zero_points = None if symmetric else np.empty((n, blocks), np.uint8)
    if gram is not None:
        gram = padded_gram(gram, blocks * block_size)
        factor = gptq_factor(gram) if factor is None else factor
    for start in range(0, n, COLUMNS_PER_CHUNK):
        stop = min(start + COLUMNS_PER_CHUNK, n)
        if gram is not None:
            levels[start:stop], scales[start:stop], zero_points[start:stop] = gptq_levels(
                padded[:, start:stop], gram, bits, block_size, channel, factor
            )
            continue
        x = np.ascontiguousarray(padded[:, start:stop].T).reshape(stop - start, blocks, block_size)
        if symmetric:
            levels[start:stop], scales[start:stop] = _symmetric(x, bits, least_squares)
        elif searched:
            levels[start:stop], scales[start:stop], zero_points[start:stop] = _searched(x, bits, channel)
        else:
            levels[start:stop], scales[start:stop], zero_points[start:stop] = _asymmetric(x, bits)
    packed = _pack(levels, bits)
    if zero_points is not None and bits == 4:  # two blocks a byte, the last alone if odd
        zero_points = _pack(np.pad(zero_points, ((0, 0), (0, blocks % 2))), 4)
    return packed, scales, zero_points


def dequantize_blocks(
    packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, k: int
) -> np.ndarray:
    """The (K, N) float32 weight MatMulNBits computes with: the plain reference of the layout."""
    n, blocks, _ = packed.shape
    levels = _unpack(packed, bits).astype(np.float32)  # (N, blocks, block_size)
    if zero_points is None:
        zero = np.full((n, blocks), 2 ** (bits - 1), np.float32)
    else:
        zero = _unpack(zero_points, bits).reshape(n, -1)[:, :blocks].astype(np.float32)
    values = (levels - zero[..., None]) * scales[..., None]
    return values.reshape(n, -1)[:, :k].T.copy()


def symmetric_reference(x: np.ndarray, bits: int, least_squares: bool) -> tuple[np.ndarray, np.ndarray]:
    """Levels (offset by 2^(bits-1)) and scales of blocks x (..., block_size): the
    specification of the native `symmetric_blocks`."""
    half = 2 ** (bits - 1)
    extreme = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)[..., 0]
    safe = np.where(extreme == 0, 1.0, extreme).astype(np.float32)
    best_scale = safe / -half
    best_levels = _round(x, best_scale, half)
    if least_squares:
        best_error = _error(x, best_levels, best_scale)
        for step in SEARCH_STEPS[SEARCH_STEPS != 0]:
            candidate = _round(x, safe / -(half + step), half)
            dot = (x * candidate).sum(-1)
            norm = (candidate * candidate).sum(-1)
            scale = np.where(norm > 0, dot / np.maximum(norm, 1e-30), best_scale).astype(np.float32)
            error = _error(x, candidate, scale)
            better = error < best_error
            best_levels = np.where(better[..., None], candidate, best_levels)
            best_scale = np.where(better, scale, best_scale)
            best_error = np.where(better, error, best_error)
    best_scale = np.where(extreme == 0, 0.0, best_scale).astype(np.float32)
    return (best_levels + half).astype(np.uint8), best_scale


def _round(x: np.ndarray, scale: np.ndarray, half: int) -> np.ndarray:
    """Signed levels of x on `scale` (per block), clipped to the format's range, as float32."""
    return np.clip(np.rint(x / scale[..., None]), -half, half - 1).astype(np.float32)


def _error(x: np.ndarray, levels: np.ndarray, scale: np.ndarray) -> np.ndarray:
    residual = x - levels * scale[..., None]
    return (residual * residual).sum(-1)


def _asymmetric(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min/max levels, scales and integer zero points (ONNX Runtime's rule: the range holds 0)."""
    top = 2**bits - 1
    low = np.minimum(x.min(-1), 0.0)
    high = np.maximum(x.max(-1), 0.0)
    scale = ((high - low) / top).astype(np.float32)
    safe = np.where(scale == 0, 1.0, scale)
    zero = np.clip(np.rint(-low / safe), 0, top)
    levels = np.clip(np.rint(x / safe[..., None]) + zero[..., None], 0, top)
    return levels.astype(np.uint8), scale, zero.astype(np.uint8)


def _searched(x: np.ndarray, bits: int, channel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`searched_reference`, by the native kernel (bit for bit the same) when it was built and
    the blocks hold at least 8 values, its rows split over `threads()` threads."""
    kernel = _native()
    if kernel is None or x.shape[-1] < 8 or x.size == 0:
        return searched_reference(x, bits, channel)
    channel = np.ascontiguousarray(np.broadcast_to(channel, x.shape[-2:]), dtype=np.float32)
    return _by_rows(lambda rows: kernel.searched_blocks(rows, channel, bits, SEARCH_RANGE_STEPS), x)


def _symmetric(x: np.ndarray, bits: int, least_squares: bool) -> tuple[np.ndarray, np.ndarray]:
    """`symmetric_reference`, natively (bit for bit the same) as `_searched` is."""
    kernel = _native()
    if kernel is None or x.shape[-1] < 8 or x.size == 0:
        return symmetric_reference(x, bits, least_squares)
    return _by_rows(lambda rows: kernel.symmetric_blocks(rows, bits, least_squares, SEARCH_STEPS), x)


def _by_rows(kernel: Callable[[np.ndarray], tuple[np.ndarray, ...]], x: np.ndarray) -> Any:
    """`kernel` over the blocks x (..., blocks, block_size), its rows split over threads (the
    kernels release the GIL); the per-block outputs are reshaped to x's leading axes."""
    shape = x.shape
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, *shape[-2:])
    results = _in_ranges(len(rows), max(1, rows.size // 65536), lambda lo, hi: kernel(rows[lo:hi]))
    joined = [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]
    return tuple(a.reshape(shape if a.ndim == 3 else shape[:-1]) for a in joined)


def _in_ranges(count: int, pieces: int, run: Callable[[int, int], Any]) -> list[Any]:
    """run(lo, hi) over [0, count) cut into at most min(pieces, threads()) equal ranges, each in a
    thread of its own when there are several (the native kernels release the GIL)."""
    bounds = np.linspace(0, count, min(threads(), pieces) + 1).astype(int)
    if len(bounds) == 2:
        return [run(0, count)]
    with ThreadPoolExecutor(len(bounds) - 1) as pool:
        return list(pool.map(lambda i: run(bounds[i], bounds[i + 1]), range(len(bounds) - 1)))


def threads() -> int:
    """The CPUs this process may run on: how many threads the native kernels split work over."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def native_available() -> bool:
    """Whether csrc/_blockquant.pyx was built (`python setup.py build_ext --inplace`)."""
    return _native() is not None


def _native() -> ModuleType | None:
    try:
        from lmfast.export import _blockquant  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _blockquant


def searched_reference(
    x: np.ndarray, bits: int, channel: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels, scales and zero points of blocks x (..., blocks, block_size) minimizing the
    error weighted by `channel` (blocks, block_size) importance times sqrt(sigma^2 + x^2).

    The specification of `csrc/_blockquant.pyx`, which computes the same bits natively. Written
    in place on a few reused buffers; the products are formed in the order of the plain
    expressions (w * l * l is (w * l) * l), so the rounding is theirs."""
    top = 2**bits - 1
    sigma2 = 2.0 * (x * x).mean(-1, keepdims=True)
    weights = (channel * np.sqrt(sigma2 + x * x)).astype(np.float32)
    low = np.minimum(x.min(-1), 0.0)
    high = np.maximum(x.max(-1), 0.0)
    span = np.where(high > low, high - low, 1.0).astype(np.float32)
    # the min/max rounding (ONNX Runtime's rule) is the first candidate: never worse than it
    best_levels, best_scale, best_zero = _asymmetric(x, bits)
    best_levels = best_levels.astype(np.float32)
    best_zero = best_zero.astype(np.float32)
    best_error = _weighted_error(x, weights, best_levels - best_zero[..., None], best_scale)
    sum_w = weights.sum(-1)
    sum_wx = (weights * x).sum(-1)
    shifted = x - low[..., None]
    levels = np.empty_like(x)
    product = np.empty_like(x)
    for step in SEARCH_RANGE_STEPS:
        inverse = (top + step) / span
        _levels_into(levels, np.multiply(shifted, inverse[..., None], out=levels), top)
        np.multiply(weights, levels, out=product)
        sum_wl = product.sum(-1)
        sum_wll = (product * levels).sum(-1)
        sum_wlx = np.multiply(product, x, out=product).sum(-1)
        det = sum_w * sum_wll - sum_wl * sum_wl
        ok = det > 1e-30 * np.maximum(sum_w * sum_wll, 1e-30)
        det = np.where(ok, det, 1.0)
        scale = np.where(ok, (sum_w * sum_wlx - sum_wl * sum_wx) / det, 0.0)
        minimum = np.where(ok, (sum_wll * sum_wx - sum_wl * sum_wlx) / det, 0.0)
        ok &= scale > 0
        scale = np.where(ok, scale, 1.0)
        zero = np.clip(np.rint(-minimum / scale), 0, top)
        for _ in range(2):  # re-round on the snapped zero point, refit the scale
            np.divide(x, scale[..., None], out=levels)
            _levels_into(levels, np.add(levels, zero[..., None], out=levels), top)
            levels -= zero[..., None]  # centered on the zero point from here
            np.multiply(weights, levels, out=product)
            norm = (product * levels).sum(-1)
            refit = np.multiply(product, x, out=product).sum(-1) / np.maximum(norm, 1e-30)
            scale = np.where((norm > 0) & (refit > 0), refit, scale)
        error = _weighted_error(x, weights, levels, scale, product)
        levels += zero[..., None]
        better = ok & (error < best_error)
        np.copyto(best_levels, levels, where=better[..., None])
        best_scale = np.where(better, scale, best_scale).astype(np.float32)
        best_zero = np.where(better, zero, best_zero)
        best_error = np.where(better, error, best_error)
    return best_levels.astype(np.uint8), best_scale.astype(np.float32), best_zero.astype(np.uint8)


def _levels_into(out: np.ndarray, values: np.ndarray, top: int) -> np.ndarray:
    """`np.clip(np.rint(values), 0, top)` written into `out` (which may be `values`)."""
    np.rint(values, out=out)
    np.maximum(out, 0, out=out)
    return np.minimum(out, top, out=out)


GPTQ_DAMPING = 0.01
"""Added to the Gram matrix's diagonal, times its mean: GPTQ's dampening of a near-singular H."""


def gptq_factor(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ's upper Cholesky factor of the dampened inverse Hessian of `gram` (K, K), and the
    input channels that never fire (zero diagonal): computed once per Gram matrix, however many
    column ranges and formats are rounded with it."""
    k = gram.shape[0]
    hessian = gram.astype(np.float64).copy()
    dead = np.diag(hessian) <= 0
    hessian[dead, dead] = 1.0
    hessian[np.diag_indices(k)] += GPTQ_DAMPING * np.mean(np.diag(hessian))
    inverse = np.linalg.inv(hessian)
    upper = np.ascontiguousarray(np.linalg.cholesky(inverse).T)  # row i: the update of rows after i
    return upper, dead


def gptq_levels(
    weight: np.ndarray,
    gram: np.ndarray,
    bits: int,
    block_size: int,
    channel: np.ndarray,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al. 2022) in blocks along K: input rows are rounded in order; at the first
    row of a block its scale and zero point are searched (`_searched`) on the rows as updated so
    far; each row's error, scaled by the inverse Hessian's Cholesky factor, is subtracted from the
    rows after it, which minimizes ||X (W - Q)||^2 over the calibration inputs X (gram = X^T X / n).
    `factor`: `gptq_factor(gram)` when the caller has it already.

    Returns levels (N, blocks, block_size) uint8, scales and zero points (N, blocks).
    """
    k, n = weight.shape
    blocks = k // block_size
    factor, dead = gptq_factor(gram) if factor is None else factor
    work = weight.astype(np.float64).copy()
    work[dead] = 0.0
    levels = np.empty((n, blocks, block_size), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zeros = np.empty((n, blocks), np.uint8)
    kernel = _native()
    for block in range(blocks):
        start, stop = block * block_size, (block + 1) * block_size
        x = np.ascontiguousarray(work[start:stop].T, dtype=np.float32)[:, None, :]  # (N, 1, block_size)
        _, scale, zero = _searched(x, bits, channel[block][None])
        scales[:, block], zeros[:, block] = scale[:, 0], zero[:, 0]
        safe = np.where(scale[:, 0] > 0, scale[:, 0], 1.0).astype(np.float64)
        errors = np.empty((block_size, n))
        arguments = (work, factor, start, stop, safe, zero[:, 0].astype(np.float64))
        arguments += (scale[:, 0].astype(np.float64), bits, levels[:, block], errors)
        if kernel is None:
            gptq_rows_reference(*arguments)
        else:
            _gptq_rows_native(kernel, arguments, n)
        # the block's errors reach every later row at once (GPTQ's lazy batch update)
        work[stop:] -= factor[start:stop, stop:].T @ errors
    return levels, scales, zeros


def _gptq_rows_native(kernel: ModuleType, arguments: tuple[Any, ...], n: int) -> None:
    """The native `gptq_rows` with the N columns (independent) split over threads."""
    _in_ranges(n, max(1, n // 512), lambda first, last: kernel.gptq_rows(*arguments, first, last))


def gptq_rows_reference(
    work: np.ndarray,
    factor: np.ndarray,
    start: int,
    stop: int,
    safe: np.ndarray,
    zero: np.ndarray,
    scale: np.ndarray,
    bits: int,
    levels: np.ndarray,
    errors: np.ndarray,
) -> None:
    """The row loop of one block of `gptq_levels` (the specification of the native
    `gptq_rows`): rows start..stop-1 of `work` (K, N, float64, updated in place) are rounded in
    order on their columns' `safe` scale and `zero` point into `levels` (N, stop - start); each
    row's error over its diagonal of `factor` goes to `errors` and off the block's later rows."""
    top = 2**bits - 1
    for row in range(start, stop):
        level = np.clip(np.rint(work[row] / safe + zero), 0, top)
        levels[:, row - start] = level
        error = (work[row] - (level - zero) * scale) / factor[row, row]
        errors[row - start] = error
        work[row + 1 : stop] -= np.outer(factor[row, row + 1 : stop], error)


def quantize_format(
    weight: np.ndarray,
    fmt: BlockFormat,
    block_size: int,
    importance: np.ndarray | None = None,
    gram: np.ndarray | None = None,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> Quantized:
    """`quantize_blocks` of a (K, N) weight in `fmt` (`block_size`: its size, resolved;
    `factor`: `gptq_factor` of the Gram padded to whole blocks, when the caller has it)."""
    return quantize_blocks(
        weight,
        fmt.bits,
        block_size,
        fmt.symmetric,
        fmt.rounding == "least_squares",
        importance,
        fmt.rounding == "searched",
        gram,
        factor,
    )


def padded_gram(gram: np.ndarray, size: int) -> np.ndarray:
    """The Gram matrix of inputs padded with zero channels (the padded rows' weights are 0)."""
    k = gram.shape[0]
    if k == size:
        return gram
    padded = np.zeros((size, size), gram.dtype)
    padded[:k, :k] = gram
    return padded


def _weighted_error(
    x: np.ndarray, weights: np.ndarray, centered: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """sum of weights * (x - centered * scale)^2 over each block (`out`: a buffer to reuse)."""
    residual = np.multiply(centered, scale[..., None], out=out)
    np.subtract(x, residual, out=residual)
    product = weights * residual
    return np.multiply(product, residual, out=product).sum(-1)


def _pack(levels: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return levels
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2], out[..., 1::2] = packed & 0x0F, packed >> 4
    return out


def matmul_nbits(
    model: Any,
    bits: int,
    block_size: int,
    symmetric: bool,
    accuracy_level: int,
    least_squares: bool,
    exclude: frozenset[str] = frozenset(),
) -> Any:
    """Replace every MatMul whose B is a 2-D fp32 initializer (except nodes named in `exclude`)
    by MatMulNBits over `quantize_blocks` of it; the fp32 copies no other node reads are dropped."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, added = [], []
    quantized: dict[str, list[Any]] = {}  # weight name -> its tensors, once for a shared weight
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if (
            weight is None
            or node.name in exclude
            or weight.data_type != onnx.TensorProto.FLOAT
            or len(weight.dims) != 2
        ):
            nodes.append(node)
            continue
        k, n = weight.dims
        if weight.name not in quantized:
            packed, scales, zero_points = quantize_blocks(
                numpy_helper.to_array(weight), bits, block_size, symmetric, least_squares
            )
            stem = f"{weight.name}_Q{bits}"
            tensors = [
                numpy_helper.from_array(packed, stem),
                numpy_helper.from_array(scales, f"{stem}_scales"),
            ]
            if zero_points is not None:
                tensors.append(numpy_helper.from_array(zero_points, f"{stem}_zero_points"))
            quantized[weight.name] = tensors
            added.extend(tensors)
        tensors = quantized[weight.name]
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *(t.name for t in tensors)],
                list(node.output),
                name=f"{node.name}_Q{bits}",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=bits,
                block_size=block_size,
                accuracy_level=accuracy_level,
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    drop_unused_initializers(graph)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def drop_unused_initializers(graph: Any) -> None:
    """Remove the initializers no node of `graph` (an onnx GraphProto) reads any more."""
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


@dataclass(frozen=True)
class BlockFormat:
    """How one group of a matrix's columns is stored by MatMulNBits."""

    bits: int
    symmetric: bool
    rounding: str  # least_squares, nearest or searched (asymmetric)
    block_size: int | None = None  # None: the export's --block_size

    def bits_per_weight(self, block_size: int) -> float:
        """Stored bits per weight: the levels, a float32 scale per block, a zero point per block."""
        return self.bits + (32 + (0 if self.symmetric else self.bits)) / block_size

    def stored_bits(self, k: int, n: int, block_size: int) -> int:
        """The bits `quantize_blocks` stores for a (k, n) weight: levels of K padded to whole
        blocks, a float32 scale per block, zero points packed per column (a 4-bit byte holds two)."""
        size = self.block_size or block_size
        blocks = -(-k // size)
        zero_points = 0 if self.symmetric else -(-blocks * self.bits // 8) * 8
        return n * (blocks * size * self.bits + blocks * 32 + zero_points)


Quantized = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
"""`quantize_blocks`' packed levels, scales and zero points, N first: column ranges concatenate."""

ColumnPlan = list[tuple[int, int, BlockFormat, "np.ndarray | None", "np.ndarray | None", "Quantized | None"]]
"""Column ranges [start, stop) of one (K, N) weight, each with its format, its inputs' importance
(K,) and Gram matrix (K, K) (GPTQ rounding), either None when uncalibrated, and the range already
quantized in that format (None: `matmul_nbits_planned` quantizes it)."""


def matmul_nbits_planned(
    model: Any, plan: Callable[[str, np.ndarray], ColumnPlan | None], block_size: int, accuracy_level: int
) -> tuple[Any, dict[str, int]]:
    """Replace every MatMul whose B is a 2-D fp32 initializer by MatMulNBits as `plan(node name,
    weight)` says (None: keep the MatMul). A plan of several column ranges becomes one MatMulNBits
    each and a Concat on the last axis, so one stacked q/k/v matrix can keep v at 8 bits.

    Returns:
        The model and the stored bits and weights it quantized ({"bits": ..., "weights": ...}).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, added = [], []
    done: dict[str, list[tuple[list[str], int, int, int, int]]] = {}  # weight -> (inputs, bits, N, K, block)
    totals = {"bits": 0, "weights": 0}
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) != 2:
            nodes.append(node)
            continue
        if weight.name not in done:
            array = numpy_helper.to_array(weight)
            groups = plan(node.name, array)
            if groups is None:
                nodes.append(node)
                continue
            parts = []
            for index, (start, stop, fmt, importance, gram, done_before) in enumerate(groups):
                size = fmt.block_size or block_size
                packed, scales, zero_points = done_before or quantize_format(
                    array[:, start:stop], fmt, size, importance, gram
                )
                stem = f"{weight.name}_Q{fmt.bits}" + (f"_part{index}" if len(groups) > 1 else "")
                tensors = [
                    numpy_helper.from_array(packed, stem),
                    numpy_helper.from_array(scales, f"{stem}_scales"),
                ]
                if zero_points is not None:
                    tensors.append(numpy_helper.from_array(zero_points, f"{stem}_zero_points"))
                added.extend(tensors)
                totals["bits"] += sum(t.nbytes for t in (packed, scales, zero_points) if t is not None) * 8
                totals["weights"] += array.shape[0] * (stop - start)
                parts.append(([t.name for t in tensors], fmt.bits, stop - start, array.shape[0], size))
            done[weight.name] = parts
        parts = done[weight.name]
        outputs = (
            list(node.output) if len(parts) == 1 else [f"{node.output[0]}_part{i}" for i in range(len(parts))]
        )
        for index, (inputs, bits, n, k, size) in enumerate(parts):
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [node.input[0], *inputs],
                    [outputs[index]],
                    name=f"{node.name}_Q{bits}" + (f"_part{index}" if len(parts) > 1 else ""),
                    domain="com.microsoft",
                    K=k,
                    N=n,
                    bits=bits,
                    block_size=size,
                    accuracy_level=accuracy_level,
                )
            )
        if len(parts) > 1:
            nodes.append(
                helper.make_node("Concat", outputs, list(node.output), name=f"{node.name}_concat", axis=-1)
            )
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    drop_unused_initializers(graph)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, totals
