"""lmfast.export.quantize against its NumPy reference, ONNX Runtime's kernel and its quantizer."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from lmfast.export.quantize import dequantize_blocks, matmul_nbits, quantize_blocks


def _matmul_model(weight: np.ndarray, uses: int = 1) -> onnx.ModelProto:
    """x (2, K) @ weight, `uses` MatMul nodes reading the one initializer."""
    k = weight.shape[0]
    nodes = [helper.make_node("MatMul", ["x", "w"], [f"y{i}"], name=f"mm{i}") for i in range(uses)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(uses)],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _weights(seed: int, k: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((k, n)).astype(np.float32) * rng.uniform(0.01, 3.0, size=n).astype(
        np.float32
    )
    weight[: min(k, 40), 0] = 0.0  # an all-zero block (scale 0)
    return weight


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 150),
    n=st.integers(1, 6),
    block_size=st.sampled_from([16, 32, 64]),
    bits=st.sampled_from([4, 8]),
    symmetric=st.booleans(),
    least_squares=st.booleans(),
)
def test_onnx_runtime_computes_with_the_reference_dequantized_weight(
    seed, k, n, block_size, bits, symmetric, least_squares
):
    """MatMulNBits over our bytes (fp32 compute) equals x @ dequantize_blocks, for any K (padded
    last block), any column count and both layouts; the dequantized weight stays near the input."""
    weight = _weights(seed, k, n)
    model = matmul_nbits(_matmul_model(weight), bits, block_size, symmetric, 0, least_squares)
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits"]
    assert [t.name for t in model.graph.initializer if t.name == "w"] == []  # the fp32 copy is gone
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed + 1).standard_normal((2, k)).astype(np.float32)
    packed, scales, zero_points = quantize_blocks(weight, bits, block_size, symmetric, least_squares)
    dequantized = dequantize_blocks(packed, scales, zero_points, bits, k)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ dequantized, rtol=1e-4, atol=1e-4)
    step = np.abs(weight).max(axis=0) / (2 ** (bits - 1) - 1)  # a level per column's largest block
    assert (np.abs(dequantized - weight) <= step * (1.5 if symmetric else 1.0) + 1e-6).all()
    assert (dequantized[: min(k, 40), 0] == 0).all()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_nearest_rounding_is_onnx_runtime_quantizers(bits, symmetric):
    """`rounding nearest` is ONNX Runtime's MatMulNBitsQuantizer: the same weights dequantized."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weight = _weights(3, 96, 5)
    logging.disable(logging.INFO)
    try:
        quantizer = MatMulNBitsQuantizer(
            _matmul_model(weight), bits=bits, block_size=32, is_symmetric=symmetric
        )
        quantizer.process()
    finally:
        logging.disable(logging.NOTSET)
    theirs = {t.name: numpy_helper.to_array(t) for t in quantizer.model.model.graph.initializer}
    packed, scales, zero_points = quantize_blocks(weight, bits, 32, symmetric, least_squares=False)
    zero = None if symmetric else theirs["w_zero_points"]
    expected = dequantize_blocks(
        theirs[f"w_Q{bits}"], theirs["w_scales"].reshape(scales.shape), zero, bits, 96
    )
    np.testing.assert_array_equal(dequantize_blocks(packed, scales, zero_points, bits, 96), expected)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([4, 8]))
def test_least_squares_never_leaves_a_block_further_from_its_weights(seed, bits):
    weight = _weights(seed, 128, 8)

    def block_errors(least_squares: bool) -> np.ndarray:
        packed, scales, _ = quantize_blocks(weight, bits, 32, True, least_squares)
        residual = dequantize_blocks(packed, scales, None, bits, 128) - weight
        return (residual.T.reshape(8, 4, 32) ** 2).sum(-1)

    nearest, searched = block_errors(False), block_errors(True)
    assert (searched <= nearest * (1 + 1e-5) + 1e-12).all()
    assert searched.sum() < nearest.sum()


def test_a_weight_two_matmuls_read_is_quantized_once():
    model = matmul_nbits(_matmul_model(_weights(0, 64, 4), uses=2), 4, 32, True, 4, True)
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits", "MatMulNBits"]
    assert len(model.graph.initializer) == 2  # one B, one scales
    assert model.graph.node[0].input[1:] == model.graph.node[1].input[1:]


def test_excluded_nodes_and_bits_are_checked():
    model = matmul_nbits(_matmul_model(_weights(0, 64, 4), uses=2), 8, 32, True, 4, True, frozenset({"mm1"}))
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits", "MatMul"]
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantize_blocks(_weights(0, 32, 2), 3, 32)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 300),
    n=st.integers(1, 5),
    block_size=st.sampled_from([16, 32, 64, 128]),
    bits=st.sampled_from([4, 8]),
    calibrated=st.booleans(),
)
def test_searched_blocks_are_what_onnx_runtime_computes_with(seed, k, n, block_size, bits, calibrated):
    """The searched asymmetric format through MatMulNBits (fp32 compute and the int8 compute of
    accuracy level 4) equals x @ its NumPy dequantization, for any K (a padded last block), with
    or without an importance, all-zero blocks included."""
    weight = _weights(seed, k, n)
    rng = np.random.default_rng(seed + 2)
    importance = rng.uniform(0.0, 5.0, size=k).astype(np.float32) if calibrated else None
    packed, scales, zero_points = quantize_blocks(weight, bits, block_size, False, True, importance, True)
    dequantized = dequantize_blocks(packed, scales, zero_points, bits, k)
    x = rng.standard_normal((3, k)).astype(np.float32)
    for level in (0, 4):
        model = _nbits_model(packed, scales, zero_points, bits, block_size, k, n, level)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = x @ dequantized
        tolerance = 1e-4 if level == 0 else 0.02 * (np.abs(x).max() * np.abs(dequantized).sum(0).max() + 1e-6)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-4, atol=tolerance)
    # the search may clip an outlier (a narrower range rounds the rest finer), never leave the range
    low, high = np.minimum(weight.min(axis=0), 0), np.maximum(weight.max(axis=0), 0)
    step = (high - low) / (2**bits - 1) + 1e-6
    assert ((dequantized >= low - step) & (dequantized <= high + step)).all()
    assert (dequantized[: min(k, 40), 0] == 0).all()


def _nbits_model(packed, scales, zero_points, bits, block_size, k, n, level) -> onnx.ModelProto:
    inputs = ["x", "B", "scales"] + (["zero_points"] if zero_points is not None else [])
    initializers = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")]
    if zero_points is not None:
        initializers.append(numpy_helper.from_array(zero_points, "zero_points"))
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block_size,
        accuracy_level=level,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), calibrated=st.booleans())
def test_searched_blocks_never_weigh_more_error_than_min_max(seed, calibrated):
    """Per block, the search keeps min/max rounding as a candidate: its weighted error is never
    larger, and over a matrix it is smaller."""
    weight = _weights(seed, 128, 8)
    importance = np.random.default_rng(seed).uniform(0.1, 4.0, 128).astype(np.float32) if calibrated else None
    channel = np.ones(128, np.float32) if importance is None else importance

    def block_errors(searched: bool) -> np.ndarray:
        packed, scales, zero_points = quantize_blocks(weight, 4, 32, False, True, importance, searched)
        residual = dequantize_blocks(packed, scales, zero_points, 4, 128) - weight
        blocks = (residual * residual).T.reshape(8, 4, 32)
        x = weight.T.reshape(8, 4, 32)
        emphasis = np.sqrt(2 * (x * x).mean(-1, keepdims=True) + x * x)
        return (blocks * channel.reshape(4, 32) * emphasis).sum(-1)

    minmax, searched = block_errors(False), block_errors(True)
    assert (searched <= minmax * (1 + 1e-4) + 1e-9).all()
    assert searched.sum() < minmax.sum()


def test_searched_is_deterministic_and_checks_its_arguments():
    weight = _weights(5, 96, 3)
    importance = np.linspace(0.5, 2.0, 96, dtype=np.float32)
    first = quantize_blocks(weight, 4, 32, False, True, importance, True)
    second = quantize_blocks(weight.copy(), 4, 32, False, True, importance.copy(), True)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="asymmetric"):
        quantize_blocks(weight, 4, 32, True, True, None, True)
    with pytest.raises(ValueError, match="one value per input channel"):
        quantize_blocks(weight, 4, 32, False, True, importance[:10], True)
