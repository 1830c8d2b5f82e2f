"""lmfast.PackedQuantizedMatMul (csrc/ortops/qmatmul_packed.cc) and its load-time repacking
(lmfast.generation.quant_pack) against the NumPy references, the file-layout op and MatMulNBits,
through every kernel path this CPU can run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from lmfast.generation import native_ops
from lmfast.generation.native_ops import DOMAIN, quantized_matmul_reference
from lmfast.generation.quant_pack import pack_nbits, packed_matmul_reference, unpack_nbits
from tests.generation.test_native_ops import (
    OPSETS,
    _dequantized,
    _nbits_model,
    _random_nbits,
    _session,
    kernel_path,  # noqa: F401 (a fixture)
    needs_library,
    shapes,
)


def _packed_model(rows: int, k: int, n: int, bits: int, block: int, packed) -> onnx.ModelProto:
    data, scales, zero_points = packed
    arrays = [("B", data, TensorProto.UINT8), ("scales", scales, TensorProto.FLOAT)]
    if zero_points is not None:
        arrays.append(("zp", zero_points, TensorProto.UINT8))
    initializers = [
        helper.make_tensor(name, kind, list(array.shape), array.tobytes(), raw=True)
        for name, array, kind in arrays
    ]
    node = helper.make_node(
        "PackedQuantizedMatMul",
        ["A", *(name for name, _, _ in arrays)],
        ["Y"],
        domain=DOMAIN,
        K=k,
        N=n,
        bits=bits,
        block_size=block,
    )
    graph = helper.make_graph(
        [node],
        "packed",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, None])],  # K checked by the op
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=OPSETS)


def _weights(rng, k: int, n: int, bits: int, block: int, with_zero_points: bool, zero_blocks: bool):
    """MatMulNBits inputs; at 8 bits with zero points, levels within int8 of their zero point (what
    an asymmetric export can pack)."""
    packed, scales, zero_points = _random_nbits(rng, k, n, bits, block, with_zero_points, zero_blocks)
    if bits == 8 and zero_points is not None:
        blocks = -(-k // block)
        zero = zero_points.reshape(n, blocks)
        offsets = rng.integers(-128, 128, size=packed.shape)
        packed = np.clip(zero[:, :, None].astype(np.int64) + offsets, 0, 255).astype(np.uint8)
    return packed, scales, zero_points


@needs_library
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=shapes,
    bits=st.sampled_from([4, 8]),
    block=st.sampled_from([16, 32, 64, 128]),
    with_zero_points=st.booleans(),
    zero_blocks=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_packed_matmul_matches_references_and_matmulnbits(
    kernel_path,  # noqa: F811
    shape,
    bits,
    block,
    with_zero_points,
    zero_blocks,
    seed,
):
    rows, k, n = shape
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, k)).astype(np.float32)
    if zero_blocks:  # activation rows that quantize to all-zero blocks
        a[rows // 2 :] = 0.0
    packed, scales, zero_points = _weights(rng, k, n, bits, block, with_zero_points, zero_blocks)
    repacked = pack_nbits(packed, scales, zero_points, n, k, bits, block)
    assert repacked is not None
    ours = _session(_packed_model(rows, k, n, bits, block, repacked), True).run(None, {"A": a})[0]
    expected = packed_matmul_reference(a, *repacked, n, k, bits, block)
    file_layout = quantized_matmul_reference(a, packed, scales, zero_points, k, bits, block)
    weight = _dequantized(packed, scales, zero_points, k, bits, block)
    magnitude = np.abs(a).astype(np.float64) @ np.abs(weight).T
    # the integer dots are exact: what is left is fp32 rounding of the per-block terms
    tolerance = float(1e-5 * magnitude.max(initial=0) + 1e-6)
    assert ours.shape == (rows, n)
    np.testing.assert_allclose(expected, file_layout, rtol=0, atol=1e-6 * tolerance)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance)
    # against MatMulNBits at fp32 (accuracy_level 0): at most half an activation step per element
    stock = _session(_nbits_model(rows, k, n, bits, block, packed, scales, zero_points, op="stock"), False)
    step = np.abs(a).max(initial=0) / 254
    bound = step * np.abs(weight).sum(axis=1)[None, :] + 1e-5 * magnitude + 1e-6
    assert (np.abs(ours - stock.run(None, {"A": a})[0]) <= bound).all()
    if zero_blocks:
        assert not ours[rows // 2 :].any()


@given(
    k=st.integers(1, 200),
    n=st.integers(1, 30),
    bits=st.sampled_from([4, 8]),
    block=st.sampled_from([16, 32, 64]),
    with_zero_points=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_nbits_round_trips(k, n, bits, block, with_zero_points, seed):
    rng = np.random.default_rng(seed)
    packed, scales, zero_points = _weights(rng, k, n, bits, block, with_zero_points, False)
    blocks = -(-k // block)
    data, packed_scales, packed_zero = pack_nbits(packed, scales, zero_points, n, k, bits, block)
    assert data.shape == (-(-n // 8), blocks, block * bits) and packed_scales.shape == (-(-n // 8), blocks, 8)
    w, zero, back_scales = unpack_nbits(data, packed_scales, packed_zero, n, k, bits, block)
    raw = packed.reshape(n, blocks, -1)
    if bits == 4:
        raw = np.stack([raw & 0x0F, raw >> 4], axis=-1)
    q = raw.reshape(n, -1).astype(np.int16)
    default = np.full((n, blocks), 1 << (bits - 1))
    file_zero = default if zero_points is None else zero_points.reshape(n, -1)
    if bits == 4 and zero_points is not None:
        file_zero = np.stack([file_zero & 0x0F, file_zero >> 4], axis=-1).reshape(n, -1)
    file_zero = file_zero[:, :blocks].astype(np.int16)
    # w - zero point per element, over K (the padding past K is zero in the packed layout)
    np.testing.assert_array_equal(
        (w - np.repeat(zero, block, axis=1))[:, :k], (q - np.repeat(file_zero, block, axis=1))[:, :k]
    )
    assert not w[:, k:].any()
    np.testing.assert_array_equal(back_scales, scales.reshape(n, blocks))


def test_pack_nbits_refuses_what_the_layout_cannot_hold():
    rng = np.random.default_rng(1)
    packed, scales, _ = _random_nbits(rng, 64, 8, 8, 32, False, False)
    packed[0, 0, 0] = 255
    zero_points = np.zeros(8 * 2, dtype=np.uint8)  # q - 0 = 255: outside int8
    assert pack_nbits(packed, scales, zero_points, 8, 64, 8, 32) is None
    assert pack_nbits(packed, scales, None, 8, 64, 8, 32) is not None
    assert pack_nbits(packed[:, :, :12], scales, None, 8, 60, 8, 12) is None  # block not a multiple of 8


@needs_library
@pytest.mark.parametrize("bits", [4, 8])
def test_swap_packs_matmulnbits_and_falls_back_to_the_file_layout(bits):
    rng = np.random.default_rng(4)
    k, n = 70, 13
    packed, scales, zero_points = _weights(rng, k, n, bits, 32, True, False)
    model = _nbits_model(3, k, n, bits, 32, packed, scales, zero_points, op="stock")
    assert native_ops.swap_nbits_matmuls(model) == 1
    assert [(node.domain, node.op_type) for node in model.graph.node] == [(DOMAIN, "PackedQuantizedMatMul")]
    assert {tensor.name for tensor in model.graph.initializer}.isdisjoint({"B", "scales", "zp"})
    a = rng.standard_normal((3, k)).astype(np.float32)
    expected = quantized_matmul_reference(a, packed, scales, zero_points, k, bits, 32)
    np.testing.assert_allclose(_session(model, True).run(None, {"A": a})[0], expected, rtol=1e-5, atol=1e-5)
    if bits == 8:  # a level 255 above its zero point of 0 does not fit in int8: the file layout stays
        packed[0, 0, 0], zero_points[:] = 255, 0
        wide = _nbits_model(3, k, n, bits, 32, packed, scales, zero_points, op="stock")
        assert native_ops.swap_nbits_matmuls(wide) == 1
        assert wide.graph.node[0].op_type == "QuantizedMatMul"


@needs_library
def test_packed_matmul_rejects_mismatched_shapes():
    rng = np.random.default_rng(2)
    packed, scales, _ = _random_nbits(rng, 64, 8, 4, 32, False, False)
    model = _packed_model(1, 64, 8, 4, 32, pack_nbits(packed, scales, None, 8, 64, 4, 32))
    session = _session(model, True)
    with pytest.raises(Exception, match="PackedQuantizedMatMul"):
        session.run(None, {"A": np.zeros((1, 60), dtype=np.float32)})


@needs_library
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.sampled_from([1, 3, 8, 32]),
    k=st.integers(1, 100),
    block=st.sampled_from([16, 32, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_activations_round_half_to_even_exactly(kernel_path, rows, k, block, seed):  # noqa: F811
    """Each block holds a +-127 (so x * 127 / max|x| is x itself) and ties at half-integers; one-hot
    8-bit weights with scale 1 read every rounded activation back, which must be np.rint's."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-253, 254, size=(rows, k)).astype(np.float32) / 2  # half-integers in [-126.5, 126.5]
    a[:, ::block] = rng.choice([-127.0, 127.0], size=a[:, ::block].shape)
    blocks = -(-k // block)
    levels = np.full((k, blocks * block), 128, dtype=np.uint8)  # w = q - 128: one-hot rows
    levels[np.arange(k), np.arange(k)] = 129
    packed = levels.reshape(k, blocks, block)
    repacked = pack_nbits(packed, np.ones((k, blocks), dtype=np.float32), None, k, k, 8, block)
    ours = _session(_packed_model(rows, k, k, 8, block, repacked), True).run(None, {"A": a})[0]
    np.testing.assert_array_equal(ours, np.rint(a))
    np.testing.assert_array_equal(packed_matmul_reference(a, *repacked, k, k, 8, block), np.rint(a))


@needs_library
@pytest.mark.parametrize("rows", [1, 3, 6, 8, 32])  # every register tile: 4 rows, then 3, 2 or 1
@pytest.mark.parametrize("bits,block", [(8, 32), (8, 64), (8, 16), (4, 32), (4, 64), (4, 128)])
def test_every_tile_matches_the_reference(kernel_path, rows, bits, block):  # noqa: F811
    """Deterministic cover of the tiles hypothesis may miss: K = 150 (a partial last block), N = 21
    (a partial last group), zero points at 4 bits, one all-zero activation row and a zero-scale
    block of weights."""
    rng = np.random.default_rng(rows * 1000 + bits * 100 + block)
    k, n = 150, 21
    a = rng.standard_normal((rows, k)).astype(np.float32)
    a[rows // 2] = 0.0
    packed, scales, zero_points = _weights(rng, k, n, bits, block, bits == 4, False)
    scales.reshape(n, -1)[3, 1] = 0.0
    repacked = pack_nbits(packed, scales, zero_points, n, k, bits, block)
    ours = _session(_packed_model(rows, k, n, bits, block, repacked), True).run(None, {"A": a})[0]
    expected = packed_matmul_reference(a, *repacked, n, k, bits, block)
    weight = _dequantized(packed, scales, zero_points, k, bits, block)
    tolerance = float(1e-5 * (np.abs(a).astype(np.float64) @ np.abs(weight).T).max() + 1e-6)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance)
    assert not ours[rows // 2].any()
