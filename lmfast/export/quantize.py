"""Block-wise weight-only quantization into ONNX Runtime's MatMulNBits layout.

ONNX Runtime's own `MatMulNBitsQuantizer` rounds each block to nearest on the scale
`max / -2^(bits-1)` (the signed value of largest magnitude lands on the lowest level), exactly
llama.cpp's q4_0/q8_0 rule. Round-to-nearest on that one scale is often not the closest the
block's levels can come to its weights: `least_squares` tries 17 scales around it and keeps, per
block, the rounding whose least-squares scale leaves the smallest squared error (llama.cpp's
`make_qx_quants` idea, without an importance matrix). The layout, size, kernel and speed are the
same; only the chosen levels and scales differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEARCH_STEPS = np.linspace(-1.0, 1.0, 17, dtype=np.float32)
"""Offsets to the level count the symmetric scale divides by: 2^(bits-1) + step (0 is RTN)."""

COLUMNS_PER_CHUNK = 4096
"""Output columns quantized at a time: bounds the float32 temporaries of a vocabulary matrix."""


def quantize_blocks(
    weight: np.ndarray, bits: int, block_size: int, symmetric: bool = True, least_squares: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' B, scales and zero points for a MatMul weight (K, N), blocks along K.

    Returns:
        packed (N, blocks, block_size * bits / 8) uint8, low nibble first at 4 bits;
        scales (N, blocks) float32; zero points (N, ceil(blocks * bits / 8)) uint8 packed the same
        way, or None where symmetric (the kernel's implied 2^(bits-1)).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = weight
    levels = np.empty((n, blocks, block_size), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zero_points = None if symmetric else np.empty((n, blocks), np.uint8)
    for start in range(0, n, COLUMNS_PER_CHUNK):
        stop = min(start + COLUMNS_PER_CHUNK, n)
        x = np.ascontiguousarray(padded[:, start:stop].T).reshape(stop - start, blocks, block_size)
        if symmetric:
            levels[start:stop], scales[start:stop] = _symmetric(x, bits, least_squares)
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


def _symmetric(x: np.ndarray, bits: int, least_squares: bool) -> tuple[np.ndarray, np.ndarray]:
    """Levels (offset by 2^(bits-1)) and scales of blocks x (..., block_size)."""
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
