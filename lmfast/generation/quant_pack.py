"""MatMulNBits' weights repacked for lmfast.PackedQuantizedMatMul (csrc/ortops/qmatmul_packed.h).

MatMulNBits stores each output row's blocks one after another, so a kernel that reads the file's
layout streams one row at a time and sums each row's lanes horizontally. The packed layout, written
once when the graph is rewritten (and kept in native_ops' cache), interleaves 8 rows: within a
group of 8 rows and a block, each 32-byte "unit" holds 4 consecutive elements of each of the 8
rows, so one 4-byte broadcast of the int8 activations against a unit gives the 8 rows' partial dots
in 8 lanes, and the 8 rows' scales are one contiguous vector.

- 8 bits: the unit holds w = q - zero point as int8. Packed only where every w fits in
  [-128, 127] (always for symmetric exports, whose zero point is 128); otherwise `pack_nbits`
  returns None and the file's layout stays (lmfast.QuantizedMatMul).
- 4 bits: units c and c + block/8 share 32 bytes (low and high nibble: the levels q, unsigned), and
  the zero points, when the file has them, are 8 bytes per group and block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmfast.generation.native_common import DOMAIN, block_dot_reference

ROWS = 8
"""Output rows interleaved per group (one AVX2 register of int32 / fp32 lanes)."""


def _levels(packed: np.ndarray, n: int, k: int, bits: int, block: int) -> np.ndarray:
    """The integer levels q [n, blocks * block] of MatMulNBits' B, the tail past K zeroed."""
    blocks = -(-k // block)
    raw = packed.reshape(n, blocks, -1)
    if bits == 4:
        raw = np.stack([raw & 0x0F, raw >> 4], axis=-1)
    q = raw.reshape(n, blocks * block).astype(np.int16)
    q[:, k:] = 0
    return q


def _zero_points(zero_points: np.ndarray | None, n: int, blocks: int, bits: int) -> np.ndarray:
    """Zero points [n, blocks] from MatMulNBits' packing (4 bits: two per byte), default 2^(bits-1)."""
    if zero_points is None:
        return np.full((n, blocks), 1 << (bits - 1), dtype=np.int16)
    zero = zero_points.reshape(n, -1)
    if bits == 4:
        zero = np.stack([zero & 0x0F, zero >> 4], axis=-1).reshape(n, -1)
    return zero[:, :blocks].astype(np.int16)


def pack_nbits(
    packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    n: int,
    k: int,
    bits: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """MatMulNBits' B, scales and zero points in lmfast.PackedQuantizedMatMul's layout: data
    uint8 [groups, blocks, block * bits], scales fp32 [groups, blocks, 8] and (4 bits with zero
    points) uint8 [groups, blocks, 8]; rows, K and blocks zero-padded. None where the layout cannot
    hold the weights: a block that is not a multiple of 8, or 8-bit q - zero point outside int8."""
    if bits not in (4, 8) or block % 8:
        return None
    blocks = -(-k // block)
    groups = -(-n // ROWS)
    q = _levels(packed, n, k, bits, block)
    zero = _zero_points(zero_points, n, blocks, bits)
    if bits == 8:
        q = q - np.repeat(zero, block, axis=1)
        q[:, k:] = 0
        if q.size and (q.min() < -128 or q.max() > 127):
            return None
    levels = np.zeros((groups * ROWS, blocks * block), dtype=np.int16)
    levels[:n] = q
    units = block // 4
    # [groups, 8 rows, blocks, units, 4] -> [groups, blocks, units, 8 rows, 4]: 32 bytes per unit
    tiled = levels.reshape(groups, ROWS, blocks, units, 4).transpose(0, 2, 3, 1, 4)
    tiled = tiled.reshape(groups, blocks, units, ROWS * 4)
    if bits == 8:
        data = tiled.astype(np.int8).view(np.uint8)
    else:
        half = units // 2
        data = (tiled[:, :, :half] | (tiled[:, :, half:] << 4)).astype(np.uint8)
    data = np.ascontiguousarray(data.reshape(groups, blocks, block * bits))
    padded_scales = np.zeros((groups * ROWS, blocks), dtype=np.float32)
    padded_scales[:n] = scales.reshape(n, blocks)
    packed_scales = np.ascontiguousarray(padded_scales.reshape(groups, ROWS, blocks).transpose(0, 2, 1))
    packed_zero = None
    if bits == 4 and zero_points is not None:
        padded_zero = np.zeros((groups * ROWS, blocks), dtype=np.uint8)
        padded_zero[:n] = zero
        packed_zero = np.ascontiguousarray(padded_zero.reshape(groups, ROWS, blocks).transpose(0, 2, 1))
    return data, packed_scales, packed_zero


def unpack_nbits(
    data: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    n: int,
    k: int,
    bits: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed layout read back: integer weights w [n, blocks * block] (8 bits: q - zero point;
    4 bits: q), zero points [n, blocks] (8 bits: 0, folded into w) and scales [n, blocks]."""
    groups, blocks = data.shape[0], data.shape[1]
    units = block // 4
    if bits == 8:
        tiled = data.view(np.int8).astype(np.int16).reshape(groups, blocks, units, ROWS, 4)
    else:
        raw = data.reshape(groups, blocks, units // 2, ROWS * 4)
        tiled = np.concatenate([raw & 0x0F, raw >> 4], axis=2).astype(np.int16)
        tiled = tiled.reshape(groups, blocks, units, ROWS, 4)
    w = tiled.transpose(0, 3, 1, 2, 4).reshape(groups * ROWS, blocks * block)[:n]
    if bits == 8:
        zero = np.zeros((n, blocks), dtype=np.int16)
    elif zero_points is None:
        zero = np.full((n, blocks), 8, dtype=np.int16)
    else:
        zero = zero_points.transpose(0, 2, 1).reshape(groups * ROWS, blocks)[:n].astype(np.int16)
    return w, zero, scales.transpose(0, 2, 1).reshape(groups * ROWS, blocks)[:n]


def packed_matmul_reference(
    a: np.ndarray,
    data: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    n: int,
    k: int,
    bits: int,
    block: int,
) -> np.ndarray:
    """What lmfast.PackedQuantizedMatMul computes, in NumPy: A's rows quantized per block
    (`quantize_activations`), the exact integer dot of each block with the unpacked weights, minus
    zero point * sum xq, scaled by both scales and summed over blocks in float64."""
    w, zero, w_scales = unpack_nbits(data, scales, zero_points, n, k, bits, block)
    blocks = zero.shape[1]
    return block_dot_reference(a, w.reshape(n, blocks, block), zero, w_scales, block)


def pack_node(node: Any, initializers: dict[str, Any], graph: Any, attributes: dict[str, int]) -> bool:
    """Turn the MatMulNBits `node` (inputs A, B, scales[, zero points], all initializers but A)
    into lmfast.PackedQuantizedMatMul over packed copies of its weights, added to `graph`. False
    (node untouched) where the weights are not initializers or `pack_nbits` cannot hold them."""
    from onnx import TensorProto, numpy_helper

    inputs = list(node.input)
    tensors = [initializers.get(name) for name in inputs[1:]]
    if any(tensor is None for tensor in tensors):
        return False
    arrays = [numpy_helper.to_array(tensor) for tensor in tensors]
    zero_points = arrays[2] if len(arrays) == 3 else None
    k, n, bits, block = (attributes[name] for name in ("K", "N", "bits", "block_size"))
    result = pack_nbits(arrays[0], arrays[1], zero_points, n, k, bits, block)
    if result is None:
        return False
    names = []
    for suffix, array, data_type in zip(
        ("data", "scales", "zero_points"),
        result,
        (TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8),
        strict=True,
    ):
        if array is None:
            continue
        name = f"{inputs[1]}_lmfast_packed_{suffix}"
        names.append(name)
        if name in initializers:  # a weight shared by two nodes: packed once
            continue
        tensor = graph.initializer.add()  # built in place: extending copies every tensor
        tensor.name, tensor.data_type = name, data_type
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.tobytes()
        initializers[name] = tensor
    del node.input[:]
    node.input.extend([inputs[0], *names])
    node.op_type, node.domain = "PackedQuantizedMatMul", DOMAIN
    return True
