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
from lmfast.generation.native_ops import DOMAIN, bf16_matmul_reference, swap_bf16_matmuls

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
    weight = helper.make_tensor("W", TensorProto.BFLOAT16, [n, k], weight_bits.tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Bf16MatMul", ["A", "W"], ["Y"], domain=DOMAIN)],
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
    rows, k, n = shape
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
    with pytest.raises(Exception, match="lmfast.Bf16MatMul: expected A"):
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
    assert names == {"head_bf16", "hidden_bf16_lmfast_nk"}
    ours = _session(rewritten, True).run(None, feeds)[0]
    np.testing.assert_allclose(ours, stock, rtol=1e-5, atol=1e-3)
    assert swap_bf16_matmuls(model) == 2 and swap_bf16_matmuls(model) == 0  # nothing left to swap


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
