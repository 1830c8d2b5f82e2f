"""lmfast's ONNX Runtime ops (csrc/ortops) against their NumPy references and against the stock
ops they replace, on random and edge shapes, through every kernel path this CPU can run."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from lmfast.generation import native_ops
from lmfast.generation.native_ops import (
    DOMAIN,
    bf16_matmul_reference,
    quantized_matmul_reference,
    swap_bf16_matmuls,
)

REQUIRED = os.environ.get("LMFAST_REQUIRE_NATIVE") == "1"
LIBRARY = native_ops.library_path()
needs_library = pytest.mark.skipif(
    LIBRARY is None and not REQUIRED, reason="lmfast's ONNX Runtime ops not built (setup.py build_ext)"
)
ISAS = ["scalar", "avx2"] if native_ops.isa() == "avx2" else ["scalar"]
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _session(model: onnx.ModelProto, with_library: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if with_library:
        options.register_custom_ops_library(str(LIBRARY))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _bf16_op_model(rows: int, weight_bits: np.ndarray) -> onnx.ModelProto:
    n, k = weight_bits.shape
    tiles = native_ops.bf16_tiles(weight_bits)
    weight = helper.make_tensor("W", TensorProto.BFLOAT16, list(tiles.shape), tiles.tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Bf16MatMul", ["A", "W"], ["Y"], domain=DOMAIN, K=k, N=n)],
        "bf16_matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=OPSETS)


def _stock_model(rows: int, weight_bits: np.ndarray, as_gemm: bool) -> onnx.ModelProto:
    """What `--precision bf16` exports: Cast(bf16 weight) -> MatMul(A, W[K, N]) or Gemm(transB=1)."""
    n, k = weight_bits.shape
    stored = weight_bits if as_gemm else np.ascontiguousarray(weight_bits.T)
    weight = helper.make_tensor(
        "W_bf16", TensorProto.BFLOAT16, list(stored.shape), stored.tobytes(), raw=True
    )
    cast = helper.make_node("Cast", ["W_bf16"], ["W"], to=TensorProto.FLOAT)
    if as_gemm:
        linear = helper.make_node("Gemm", ["A", "W"], ["Y"], transB=1)
    else:
        linear = helper.make_node("MatMul", ["A", "W"], ["Y"])
    graph = helper.make_graph(
        [cast, linear],
        "stock",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _tolerance(a: np.ndarray, weight_bits: np.ndarray) -> float:
    """fp32 summation error bound for K terms, scaled by the magnitudes summed."""
    weight = (weight_bits.astype(np.uint32) << 16).view(np.float32)
    magnitude = np.abs(a).astype(np.float64) @ np.abs(weight).astype(np.float64).T
    return float(2e-6 * max(a.shape[-1], 1) * magnitude.max(initial=0.0)) + 1e-30


@pytest.fixture(params=ISAS)
def kernel_path(request, monkeypatch) -> str:
    """The kernel path under test, forced for the whole test (the same for every generated input)."""
    monkeypatch.setenv("LMFAST_ORTOPS_ISA", request.param)
    assert native_ops.isa() == request.param
    return request.param


shapes = st.tuples(
    st.sampled_from([1, 2, 3, 8, 32]) | st.integers(1, 40),  # rows (batch x steps)
    st.integers(1, 300),  # K, mostly not a multiple of the 8-wide vectors
    st.integers(1, 70),  # N, mostly not a multiple of the 4-row tiles or 16-row tasks
)


@needs_library
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), zero_rows=st.booleans())
def test_bf16_matmul_matches_reference_and_stock_ops(kernel_path, shape, seed, zero_rows):
    _check_bf16_matmul(*shape, seed, zero_rows)


prompt_shapes = st.tuples(
    st.integers(150, 700),  # prompt-sized rows: many 6-row tiles, the last one partial
    st.integers(1, 600),  # K across two passes of 512, mostly not a multiple of 8
    st.integers(1, 40),  # N: the last strip of 16 rows often partial or a single group
)


@needs_library
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=prompt_shapes, seed=st.integers(0, 2**32 - 1), zero_rows=st.booleans())
def test_bf16_matmul_many_rows_matches_reference_and_stock_ops(kernel_path, shape, seed, zero_rows):
    """Prompt-sized batches: many 6-row register tiles per 16-row task, K in several passes."""
    _check_bf16_matmul(*shape, seed, zero_rows)


def _check_bf16_matmul(rows: int, k: int, n: int, seed: int, zero_rows: bool) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, k)).astype(np.float32)
    weights = rng.standard_normal((n, k)).astype(np.float32)
    if zero_rows:  # whole zero blocks of weights and activations
        weights[: n // 2] = 0.0
        a[rows // 2 :] = 0.0
    bits = _bf16_bits(weights)
    ours = _session(_bf16_op_model(rows, bits), True).run(None, {"A": a})[0]
    expected = bf16_matmul_reference(a, bits)
    tolerance = _tolerance(a, bits)
    assert ours.shape == (rows, n)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance)
    for as_gemm in (False, True):
        stock = _session(_stock_model(rows, bits, as_gemm), False).run(None, {"A": a})[0]
        np.testing.assert_allclose(ours, stock, rtol=0, atol=2 * tolerance)
    if zero_rows:
        assert not ours[rows // 2 :].any() and not ours[:, : n // 2].any()


@needs_library
def test_bf16_matmul_keeps_leading_dimensions(kernel_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 5, 24)).astype(np.float32)
    bits = _bf16_bits(rng.standard_normal((9, 24)))
    model = _bf16_op_model(0, bits)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 5, 24]))
    ours = _session(model, True).run(None, {"A": a})[0]
    assert ours.shape == (2, 5, 9)
    np.testing.assert_allclose(ours, bf16_matmul_reference(a, bits), rtol=0, atol=_tolerance(a, bits))


@needs_library
def test_bf16_matmul_rejects_mismatched_shapes():
    bits = _bf16_bits(np.ones((4, 8)))
    model = _bf16_op_model(2, bits)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 7]))
    session = _session(model, True)
    with pytest.raises(Exception, match="lmfast.Bf16MatMul: expected A"):  # K is 8
        session.run(None, {"A": np.ones((2, 7), np.float32)})


def _tied_model(k: int, n: int, vocab: int, seed: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """Shapes of a tied decoder's tail: a MatMul weight [K, N], an lm_head used by Gemm(transB=1)
    and by the embedding Gather, both Cast from bf16 as `--precision bf16` writes them."""
    rng = np.random.default_rng(seed)
    hidden = _bf16_bits(rng.standard_normal((k, n)))
    head = _bf16_bits(rng.standard_normal((vocab, n)))
    initializers = [
        helper.make_tensor("hidden_bf16", TensorProto.BFLOAT16, [k, n], hidden.tobytes(), raw=True),
        helper.make_tensor("head_bf16", TensorProto.BFLOAT16, [vocab, n], head.tobytes(), raw=True),
    ]
    nodes = [
        helper.make_node("Cast", ["hidden_bf16"], ["hidden"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["head_bf16"], ["head"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["head", "ids"], ["embedded"]),
        helper.make_node("MatMul", ["A", "hidden"], ["h"]),
        helper.make_node("Add", ["h", "embedded"], ["summed"]),
        helper.make_node("Gemm", ["summed", "head"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, [3, k]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), rng.standard_normal(
        (3, k)
    ).astype(np.float32)


@needs_library
def test_swap_rewrites_bf16_linears_and_keeps_the_embedding_cast():
    model, a = _tied_model(k=40, n=24, vocab=50, seed=1)
    feeds = {"A": a, "ids": np.array([0, 7, 49], dtype=np.int64)}
    stock = _session(model, False).run(None, feeds)[0]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert swap_bf16_matmuls(rewritten) == 2
    ops = [(node.domain, node.op_type) for node in rewritten.graph.node]
    assert ops.count((DOMAIN, "Bf16MatMul")) == 2 and ("", "MatMul") not in ops and ("", "Gemm") not in ops
    assert ops.count(("", "Cast")) == 1  # the Gather still reads the lm_head through its Cast
    names = {tensor.name for tensor in rewritten.graph.initializer}
    assert names == {"head_bf16", "head_bf16_lmfast_nk_tiles", "hidden_bf16_lmfast_kn_tiles"}
    ours = _session(rewritten, True).run(None, feeds)[0]
    np.testing.assert_allclose(ours, stock, rtol=1e-5, atol=1e-3)
    assert swap_bf16_matmuls(model) == 2 and swap_bf16_matmuls(model) == 0  # nothing left to swap


def test_bf16_tiles_layout():
    bits = np.arange(10 * 11, dtype=np.uint16).reshape(10, 11)
    tiles = native_ops.bf16_tiles(bits)
    assert tiles.shape == (2, 2, 8, 8)
    assert tiles[1, 1, 2, 1] == bits[9, 10] and tiles[0, 1, 0, 3] == bits[3, 8]  # tile[k, row]
    assert tiles[1, 0, :, 2:].sum() == 0 and tiles[0, 1, 3:].sum() == 0  # the padding


def test_swap_leaves_fp32_and_unusual_linears_alone():
    rng = np.random.default_rng(2)
    fp32 = helper.make_tensor("W", TensorProto.FLOAT, [8, 4], rng.standard_normal((8, 4)).ravel(), raw=False)
    bits = _bf16_bits(rng.standard_normal((4, 8)))
    bf16 = helper.make_tensor("V_bf16", TensorProto.BFLOAT16, [4, 8], bits.tobytes(), raw=True)
    nodes = [
        helper.make_node("MatMul", ["A", "W"], ["x"]),
        helper.make_node("Cast", ["V_bf16"], ["V"], to=TensorProto.FLOAT),
        helper.make_node("Gemm", ["x", "V"], ["y"], transB=1, alpha=0.5),  # scaled: not a plain linear
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [fp32, bf16],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = model.SerializeToString()
    assert swap_bf16_matmuls(model) == 0
    assert model.SerializeToString() == before


def test_missing_library_falls_back_or_fails_as_required(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native_ops, "_LIBRARY_GLOB", "_no_such_library*.so")
    native_ops.library_path.cache_clear()
    try:
        monkeypatch.setenv("LMFAST_REQUIRE_NATIVE", "1")
        with pytest.raises(native_ops.NativeOpsMissing, match="LMFAST_REQUIRE_NATIVE=1"):
            native_ops.library_path()
        monkeypatch.delenv("LMFAST_REQUIRE_NATIVE")
        model_path = tmp_path / "model.onnx"
        onnx.save(_tied_model(8, 8, 8, 0)[0], model_path)
        options = ort.SessionOptions()
        with caplog.at_level("WARNING"):
            assert native_ops.session_source(model_path, options) == (str(model_path), 0)
        assert "running ONNX Runtime's own ops" in caplog.text
    finally:
        native_ops.library_path.cache_clear()


def _nbits_model(
    rows: int, k: int, n: int, bits: int, block: int, packed, scales, zero_points, op: str
) -> onnx.ModelProto:
    """One MatMulNBits (op "stock", accuracy_level 0) or lmfast.QuantizedMatMul over the same inputs."""
    initializers = [
        helper.make_tensor("B", TensorProto.UINT8, list(packed.shape), packed.tobytes(), raw=True),
        helper.make_tensor("scales", TensorProto.FLOAT, list(scales.shape), scales.tobytes(), raw=True),
    ]
    inputs = ["A", "B", "scales"]
    if zero_points is not None:
        initializers.append(
            helper.make_tensor(
                "zp", TensorProto.UINT8, list(zero_points.shape), zero_points.tobytes(), raw=True
            )
        )
        inputs.append("zp")
    attributes = {"K": k, "N": n, "bits": bits, "block_size": block}
    if op == "stock":
        node = helper.make_node(
            "MatMulNBits", inputs, ["Y"], domain="com.microsoft", accuracy_level=0, **attributes
        )
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    else:
        node = helper.make_node("QuantizedMatMul", inputs, ["Y"], domain=DOMAIN, **attributes)
        opsets = OPSETS
    graph = helper.make_graph(
        [node],
        "nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=opsets)


def _random_nbits(rng, k: int, n: int, bits: int, block: int, with_zero_points: bool, zero_blocks: bool):
    blocks = -(-k // block)
    packed = rng.integers(0, 256, size=(n, blocks, block * bits // 8), dtype=np.uint8)
    scales = (rng.random((n * blocks,), dtype=np.float32) * 0.1).astype(np.float32)
    if zero_blocks:  # whole blocks that dequantize to zero
        scales[::3] = 0.0
    zero_points = None
    if with_zero_points:
        zero_points = rng.integers(0, 256, size=(n * ((blocks * bits + 7) // 8),), dtype=np.uint8)
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
def test_quantized_matmul_matches_reference_and_matmulnbits(
    kernel_path, shape, bits, block, with_zero_points, zero_blocks, seed
):
    rows, k, n = shape
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, k)).astype(np.float32)
    packed, scales, zero_points = _random_nbits(rng, k, n, bits, block, with_zero_points, zero_blocks)
    args = (rows, k, n, bits, block, packed, scales, zero_points)
    ours = _session(_nbits_model(*args, op="lmfast"), True).run(None, {"A": a})[0]
    expected = quantized_matmul_reference(a, packed, scales, zero_points, k, bits, block)
    weight = _dequantized(packed, scales, zero_points, k, bits, block)
    # the integer dots are exact: what is left is fp32 rounding of the per-block terms
    magnitude = np.abs(a).astype(np.float64) @ np.abs(weight).T
    assert ours.shape == (rows, n)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=float(1e-5 * magnitude.max(initial=0) + 1e-6))
    # against MatMulNBits at fp32 (accuracy_level 0): the activations' rounding, at most half a step
    # (max |x| of the block / 254) per element
    stock = _session(_nbits_model(*args, op="stock"), False).run(None, {"A": a})[0]
    step = np.abs(a).max(initial=0) / 254
    bound = step * np.abs(weight).sum(axis=1)[None, :] + 1e-5 * magnitude + 1e-6
    assert (np.abs(ours - stock) <= bound).all()


def _dequantized(packed, scales, zero_points, k: int, bits: int, block: int) -> np.ndarray:
    """W[N, K] in float64 as MatMulNBits defines it: (q - zero point) * scale."""
    rows = []
    for row in range(packed.shape[0]):
        blocks = -(-k // block)
        raw = packed[row].reshape(blocks, -1)
        if bits == 4:
            raw = np.stack([raw & 0x0F, raw >> 4], axis=-1)
        q = raw.reshape(-1)[:k].astype(np.float64)
        if zero_points is None:
            zero = np.full(blocks, 1 << (bits - 1), dtype=np.float64)
        else:
            per_row = zero_points.reshape(packed.shape[0], -1)[row]
            if bits == 4:
                per_row = np.stack([per_row & 0x0F, per_row >> 4], axis=-1).reshape(-1)
            zero = per_row[:blocks].astype(np.float64)
        scale = scales.reshape(packed.shape[0], blocks)[row].astype(np.float64)
        which = np.arange(k) // block
        rows.append((q - zero[which]) * scale[which])
    return np.array(rows).reshape(packed.shape[0], k)


@needs_library
def test_swap_rewrites_matmulnbits_and_keeps_unusual_ones():
    rng = np.random.default_rng(3)
    packed, scales, zero_points = _random_nbits(rng, 40, 12, 4, 32, True, False)
    model = _nbits_model(2, 40, 12, 4, 32, packed, scales, zero_points, op="stock")
    a = rng.standard_normal((2, 40)).astype(np.float32)
    assert native_ops.swap_nbits_matmuls(model, packed=False) == 1  # the file layout's op
    assert [(node.domain, node.op_type) for node in model.graph.node] == [(DOMAIN, "QuantizedMatMul")]
    expected = quantized_matmul_reference(a, packed, scales, zero_points, 40, 4, 32)
    np.testing.assert_allclose(_session(model, True).run(None, {"A": a})[0], expected, rtol=1e-5, atol=1e-5)
    with_bias = _nbits_model(2, 40, 12, 4, 32, packed, scales, zero_points, op="stock")
    with_bias.graph.node[0].input.extend(["", "bias"])  # g_idx absent, bias present: left alone
    assert native_ops.swap_nbits_matmuls(with_bias) == 0


def test_native_ops_env_names_the_swaps(monkeypatch):
    monkeypatch.delenv("LMFAST_NATIVE_OPS", raising=False)
    assert native_ops.swaps_from_env() == native_ops.DEFAULT_SWAPS
    monkeypatch.setenv("LMFAST_NATIVE_OPS", "0")
    assert native_ops.swaps_from_env() == ()
    monkeypatch.setenv("LMFAST_NATIVE_OPS", "bf16, nbits")
    assert native_ops.swaps_from_env() == ("bf16", "nbits")
    monkeypatch.setenv("LMFAST_NATIVE_OPS", "int3")
    with pytest.raises(ValueError, match="LMFAST_NATIVE_OPS: unknown \\['int3'\\]"):
        native_ops.swaps_from_env()


@needs_library
def test_second_load_opens_the_cache_entry_without_rewriting(monkeypatch, tmp_path):
    """The first load writes the rewritten graph to the cache; the next opens it without reading
    the export through onnx, and both sessions give the same logits as the in-memory rewrite."""
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "cache"))
    model, a = _tied_model(40, 24, 12, 7)
    model_path = tmp_path / "model.onnx"
    onnx.save(model, model_path)
    feeds = {"A": a, "ids": np.array([0, 5, 11], dtype=np.int64)}
    in_memory = onnx.load(str(model_path))
    assert swap_bf16_matmuls(in_memory) == 2
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(LIBRARY))
    expected = ort.InferenceSession(in_memory.SerializeToString(), options).run(None, feeds)[0]

    first, swapped = native_ops.inference_session(model_path, ort.SessionOptions(), ["CPUExecutionProvider"])
    entry = native_ops.cache_entry(model_path, native_ops.DEFAULT_SWAPS, LIBRARY)
    assert swapped == 2 and (entry / "model.onnx").is_file()
    monkeypatch.setattr(onnx, "load", _no_rewrite_expected)
    second, swapped_again = native_ops.inference_session(
        model_path, ort.SessionOptions(), ["CPUExecutionProvider"]
    )
    assert swapped_again == 2
    for session in (first, second):
        np.testing.assert_array_equal(session.run(None, feeds)[0], expected)


def _no_rewrite_expected(*args, **kwargs):
    raise AssertionError("the cached entry should have been opened without onnx.load")


@needs_library
def test_an_uncached_load_rewrites_in_memory_and_leaves_no_entry(monkeypatch, tmp_path):
    """Export parity checks a staging copy that is renamed afterwards: its rewrite must not leave a
    cache entry behind, and gives the same logits as a cached load."""
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "cache"))
    model, a = _tied_model(40, 24, 12, 7)
    model_path = tmp_path / "model.onnx"
    onnx.save(model, model_path)
    feeds = {"A": a, "ids": np.array([0, 5, 11], dtype=np.int64)}
    uncached, swapped = native_ops.inference_session(
        model_path, ort.SessionOptions(), ["CPUExecutionProvider"], cache=False
    )
    assert swapped == 2 and not (tmp_path / "cache").exists()
    cached, _ = native_ops.inference_session(model_path, ort.SessionOptions(), ["CPUExecutionProvider"])
    np.testing.assert_array_equal(uncached.run(None, feeds)[0], cached.run(None, feeds)[0])
