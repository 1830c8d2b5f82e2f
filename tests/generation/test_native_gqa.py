"""lmfast.GroupQueryAttention (csrc/ortops/gqa.cc) against its NumPy reference and against ONNX
Runtime's com.microsoft.GroupQueryAttention, bound in place as lmfast's backend binds the cache, on
random and edge shapes, over fp32 and fp16 buffers, through every kernel path this CPU can run; and
the rewrite's coverage."""

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
from lmfast.generation.native_gqa import gqa_past, gqa_reference, swap_group_query_attention

REQUIRED = os.environ.get("LMFAST_REQUIRE_NATIVE") == "1"
LIBRARY = native_ops.library_path()
needs_library = pytest.mark.skipif(
    LIBRARY is None and not REQUIRED, reason="lmfast's ONNX Runtime ops not built (setup.py build_ext)"
)
ISAS = ["scalar", "avx2"] if native_ops.isa() == "avx2" else ["scalar"]
INPUTS = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
OUTPUTS = ["output", "present_key", "present_value"]


TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
# fp16 outputs: ours and the stock op both round one fp32 result, which may differ in its last bits
# (summation order), so they agree within 2 fp16 ulps (2^-9 relative); fp32 within 1e-5
TOLERANCE = {
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-5},
    np.dtype(np.float16): {"rtol": 2e-3, "atol": 1e-4},
}


def _model(
    domain: str, heads: int, kv_heads: int, elem_type: int = TensorProto.FLOAT, **attributes
) -> onnx.ModelProto:
    """One GroupQueryAttention node; q, k, v, past, output and present are all `elem_type`."""
    value = [helper.make_tensor_value_info(name, elem_type, None) for name in INPUTS[:5]]
    lengths = [
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, None),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    node = helper.make_node(
        "GroupQueryAttention",
        INPUTS,
        OUTPUTS,
        domain=domain,
        num_heads=heads,
        kv_num_heads=kv_heads,
        **attributes,
    )
    graph = helper.make_graph(
        [node],
        "gqa",
        value + lengths,
        [helper.make_tensor_value_info(name, elem_type, None) for name in OUTPUTS],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(domain, 1)]
    )


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if any(opset.domain == native_ops.DOMAIN for opset in model.opset_import):
        options.register_custom_ops_library(str(LIBRARY))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_in_place(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """One step with present bound to past's buffer (lmfast.generation.slot_cache's binding); the
    buffers are NumPy arrays kept alive here, read back after the run."""
    binding = session.io_binding()
    caches = {name: feeds[name].copy() for name in ("past_key", "past_value")}
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in caches.items()}
    for name, array in feeds.items():
        if name in values:
            binding.bind_ortvalue_input(name, values[name])
        else:
            binding.bind_cpu_input(name, array)
    binding.bind_output("output")
    binding.bind_ortvalue_output("present_key", values["past_key"])
    binding.bind_ortvalue_output("present_value", values["past_value"])
    session.run_with_iobinding(binding)
    output = binding.copy_outputs_to_cpu()[0]
    assert all(values[name].data_ptr() == caches[name].ctypes.data for name in caches)  # still in place
    return output, caches["past_key"], caches["past_value"]


@pytest.fixture(params=ISAS)
def kernel_path(request, monkeypatch) -> str:
    monkeypatch.setenv("LMFAST_ORTOPS_ISA", request.param)
    assert native_ops.isa() == request.param
    return request.param


@st.composite
def steps(draw, head_sizes=st.sampled_from([8, 16, 64])):
    """A step's inputs, fp32 or fp16 (an fp16 cache's node): decode (one token per row, rows of
    different lengths, 1 to the buffer's capacity), a first prompt (right-padded rows), or a later
    prompt chunk of one row."""
    kv_heads = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 3, 4]))
    d = draw(head_sizes)
    capacity = draw(st.integers(1, 80) | st.integers(128, 300))  # long rows: decode in key chunks
    edges = draw(st.booleans())  # a row of one token and a full buffer
    mode = draw(st.sampled_from(["decode", "prompt", "chunk"] if capacity >= 3 else ["decode", "prompt"]))
    if mode == "chunk":
        length = capacity if edges else draw(st.integers(3, capacity))
        held = np.array([length], dtype=np.int32)
        seq, total = draw(st.integers(2, length - 1)), length
    else:
        batch = draw(st.sampled_from([1, 3, 8]))
        held = np.array(
            draw(st.lists(st.integers(1, capacity), min_size=batch, max_size=batch)), dtype=np.int32
        )
        if edges:
            held[0], held[-1] = capacity, 1 if batch > 1 else capacity
        total = int(held.max())
        seq = 1 if mode == "decode" else total  # decode with total 1: every row holds 1 token
    batch = len(held)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads = kv_heads * groups
    feeds = {
        "query": rng.standard_normal((batch, seq, heads * d)).astype(np.float32),
        "key": rng.standard_normal((batch, seq, kv_heads * d)).astype(np.float32),
        "value": rng.standard_normal((batch, seq, kv_heads * d)).astype(np.float32),
        "past_key": rng.standard_normal((batch, kv_heads, capacity, d)).astype(np.float32),
        "past_value": rng.standard_normal((batch, kv_heads, capacity, d)).astype(np.float32),
        "seqlens_k": held - 1,
        "total_sequence_length": np.array(total, dtype=np.int32),
    }
    if draw(st.booleans()):  # zero inputs: uniform attention, zero outputs
        for name in draw(st.sets(st.sampled_from(INPUTS[:5]), min_size=1)):
            feeds[name][:] = 0.0
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    for name in INPUTS[:5]:
        feeds[name] = feeds[name].astype(dtype)
    scale = draw(st.sampled_from([0.0, 0.3]))
    return feeds, heads, kv_heads, scale


def _real_positions(feeds: dict[str, np.ndarray]) -> np.ndarray:
    """(B, S) bool: query positions that hold a real token (a first prompt's padding does not)."""
    seq, total = feeds["query"].shape[1], int(feeds["total_sequence_length"])
    past = gqa_past(feeds["seqlens_k"], seq, total)
    return past[:, None] + np.arange(seq)[None] <= feeds["seqlens_k"][:, None]


def _model_for(domain: str, feeds: dict[str, np.ndarray], heads: int, kv_heads: int, scale: float):
    return _model(domain, heads, kv_heads, TYPES[feeds["query"].dtype], scale=scale)


def _close(actual: np.ndarray, desired: np.ndarray) -> None:
    assert actual.dtype == desired.dtype
    np.testing.assert_allclose(
        actual.astype(np.float32), desired.astype(np.float32), **TOLERANCE[actual.dtype]
    )


def _reference(feeds, heads, kv_heads, scale, in_place):
    return gqa_reference(
        *(feeds[name] for name in INPUTS[:6]),
        int(feeds["total_sequence_length"]),
        heads,
        kv_heads,
        scale,
        in_place=in_place,
    )


@needs_library
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=steps())
def test_gqa_matches_reference_and_stock_op_in_place(kernel_path, step):
    feeds, heads, kv_heads, scale = step
    ours = _run_in_place(_session(_model_for(native_ops.DOMAIN, feeds, heads, kv_heads, scale)), feeds)
    stock = _run_in_place(_session(_model_for("com.microsoft", feeds, heads, kv_heads, scale)), feeds)
    expected = _reference(feeds, heads, kv_heads, scale, in_place=True)
    _close(ours[0], expected[0])
    real = _real_positions(feeds)
    _close(ours[0][real], stock[0][real])
    for mine, theirs, wanted in zip(ours[1:], stock[1:], expected[1:], strict=True):
        np.testing.assert_array_equal(mine, wanted)  # the cache is a copy: bit-exact
        np.testing.assert_array_equal(mine, theirs)


@needs_library
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=steps())
def test_gqa_separate_present_buffers_match_stock_op(kernel_path, step):
    """Unbound outputs: present is a new buffer holding the past's columns, the step's, then zeros."""
    feeds, heads, kv_heads, scale = step
    ours = _session(_model_for(native_ops.DOMAIN, feeds, heads, kv_heads, scale)).run(None, feeds)
    stock = _session(_model_for("com.microsoft", feeds, heads, kv_heads, scale)).run(None, feeds)
    expected = _reference(feeds, heads, kv_heads, scale, in_place=False)
    real = _real_positions(feeds)
    _close(ours[0], expected[0])
    _close(ours[0][real], stock[0][real])
    for mine, theirs, wanted in zip(ours[1:], stock[1:], expected[1:], strict=True):
        np.testing.assert_array_equal(mine, wanted)
        np.testing.assert_array_equal(mine, theirs)


@needs_library
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=steps(head_sizes=st.sampled_from([1, 5, 67])))
def test_gqa_head_sizes_the_stock_op_refuses(kernel_path, step):
    """ONNX Runtime's kernel wants head_size % 8 == 0; lmfast's takes any (vector tails)."""
    feeds, heads, kv_heads, scale = step
    ours = _run_in_place(_session(_model_for(native_ops.DOMAIN, feeds, heads, kv_heads, scale)), feeds)
    expected = _reference(feeds, heads, kv_heads, scale, in_place=True)
    _close(ours[0], expected[0])
    for mine, wanted in zip(ours[1:], expected[1:], strict=True):
        np.testing.assert_array_equal(mine, wanted)


@needs_library
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    ("held", "kv_heads", "groups"),
    [([257], 3, 3), ([300], 1, 4), ([128], 2, 1), ([300, 1], 1, 3), ([1, 130, 299], 2, 3)],
)
def test_gqa_decode_in_key_chunks(kernel_path, held, kv_heads, groups, dtype):
    """Few (row, kv-head) pairs and long rows: the keys are split into chunks whose softmax partials
    are combined (rows of one token leave chunks empty)."""
    rng = np.random.default_rng(len(held) * 7 + kv_heads)
    batch, d, capacity = len(held), 64, 300
    heads = kv_heads * groups
    feeds = {
        "query": rng.standard_normal((batch, 1, heads * d)).astype(np.float32),
        "key": rng.standard_normal((batch, 1, kv_heads * d)).astype(np.float32),
        "value": rng.standard_normal((batch, 1, kv_heads * d)).astype(np.float32),
        "past_key": rng.standard_normal((batch, kv_heads, capacity, d)).astype(np.float32),
        "past_value": rng.standard_normal((batch, kv_heads, capacity, d)).astype(np.float32),
        "seqlens_k": np.array(held, np.int32) - 1,
        "total_sequence_length": np.array(max(held), np.int32),
    }
    feeds.update({name: feeds[name].astype(dtype) for name in INPUTS[:5]})
    ours = _run_in_place(_session(_model_for(native_ops.DOMAIN, feeds, heads, kv_heads, 0.0)), feeds)
    stock = _run_in_place(_session(_model_for("com.microsoft", feeds, heads, kv_heads, 0.0)), feeds)
    expected = _reference(feeds, heads, kv_heads, 0.0, in_place=True)
    _close(ours[0], expected[0])
    _close(ours[0], stock[0])
    for mine, theirs in zip(ours[1:], stock[1:], strict=True):
        np.testing.assert_array_equal(mine, theirs)


def _finite_halves() -> np.ndarray:
    """Every finite fp16 value's bits, -0 and the subnormals included (63,488 of them)."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    return bits[np.isfinite(bits.view(np.float16))]


@needs_library
@pytest.mark.parametrize("pair", ["same", "adjacent", "random"])
def test_gqa_fp16_widening_and_rounding_are_exact(kernel_path, pair):
    """Zero keys give two keys equal weights, so y = 0.5 v0 + 0.5 v1 is one fp32 rounding that NumPy
    reproduces: equal values must come back bit for bit (every finite fp16 value but -0, through the
    kernel's widening and its output rounding), and the midpoints of adjacent values test ties to
    even (the scalar path's own rounding, and F16C's)."""
    first = _finite_halves()
    if pair == "same":
        second = first
    elif pair == "adjacent":
        first = first[(first & 0x7FFF) != 0x7BFF]  # the largest magnitude has no finite neighbour
        second = first + np.uint16(1)
    else:
        second = np.random.default_rng(0).permutation(first)
    d = 64
    first, second = (np.resize(v, -(-len(first) // d) * d).view(np.float16) for v in (first, second))
    batch = len(first) // d
    rng = np.random.default_rng(1)
    feeds = {
        "query": rng.standard_normal((batch, 1, d)).astype(np.float16),
        "key": np.zeros((batch, 1, d), np.float16),
        "value": second.reshape(batch, 1, d),
        "past_key": np.zeros((batch, 1, 3, d), np.float16),
        "past_value": np.zeros((batch, 1, 3, d), np.float16),
        "seqlens_k": np.full(batch, 1, np.int32),  # each row: v0 at column 0, this step's v1 at 1
        "total_sequence_length": np.array(2, np.int32),
    }
    feeds["past_value"][:, 0, 0] = first.reshape(batch, d)
    y = _run_in_place(_session(_model_for(native_ops.DOMAIN, feeds, 1, 1, 0.0)), feeds)[0]
    # the kernel's order: an accumulator from +0 (so -0 comes back as +0), then each weighted value
    halves = [v.astype(np.float32) * np.float32(0.5) for v in (first, second)]
    expected = ((np.float32(0.0) + halves[0]) + halves[1]).astype(np.float16)
    np.testing.assert_array_equal(y.reshape(-1).view(np.uint16), expected.view(np.uint16))


@needs_library
def test_gqa_rejects_lengths_past_the_buffer():
    rng = np.random.default_rng(0)
    feeds = {
        "query": rng.standard_normal((2, 1, 16)).astype(np.float32),
        "key": rng.standard_normal((2, 1, 8)).astype(np.float32),
        "value": rng.standard_normal((2, 1, 8)).astype(np.float32),
        "past_key": np.zeros((2, 1, 4, 8), np.float32),
        "past_value": np.zeros((2, 1, 4, 8), np.float32),
        "seqlens_k": np.array([4, 1], np.int32),  # row 0: 5 tokens in a buffer of 4
        "total_sequence_length": np.array(4, np.int32),
    }
    session = _session(_model(native_ops.DOMAIN, 2, 1))
    with pytest.raises(Exception, match="seqlens_k out of range"):
        _run_in_place(session, feeds)


@pytest.mark.parametrize(
    ("attributes", "elem_type", "swapped"),
    [
        ({"scale": 0.125}, TensorProto.FLOAT, 1),
        ({"softcap": 0.0, "local_window_size": -1, "do_rotary": 0}, TensorProto.FLOAT, 1),  # explicit "off"
        ({"softcap": 30.0}, TensorProto.FLOAT, 0),
        ({"local_window_size": 4}, TensorProto.FLOAT, 0),
        ({"do_rotary": 1}, TensorProto.FLOAT, 0),
        ({"smooth_softmax": 1}, TensorProto.FLOAT, 0),
        ({"mask_filter_value": -1.0}, TensorProto.FLOAT, 0),  # an attribute the swap does not know
        ({}, TensorProto.FLOAT16, 1),  # an fp16 cache
        ({"softcap": 30.0}, TensorProto.FLOAT16, 0),
        ({}, TensorProto.BFLOAT16, 0),  # a type the kernel does not read
    ],
)
def test_swap_covers_only_what_the_kernel_implements(attributes, elem_type, swapped):
    model = _model("com.microsoft", 6, 2, elem_type=elem_type, **attributes)
    assert swap_group_query_attention(model) == swapped
    node = model.graph.node[0]
    assert node.domain == (native_ops.DOMAIN if swapped else "com.microsoft")
    if swapped:
        values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert values == {
            "num_heads": 6,
            "kv_num_heads": 2,
            "scale": pytest.approx(attributes.get("scale", 0.0)),
        }


def test_swap_leaves_rotary_and_packed_forms():
    model = _model("com.microsoft", 6, 2)
    node = model.graph.node[0]
    node.input.extend(["cos_cache", "sin_cache"])
    assert swap_group_query_attention(model) == 0
    packed = _model("com.microsoft", 6, 2)
    packed.graph.node[0].input[1] = ""
    packed.graph.node[0].input[2] = ""
    assert swap_group_query_attention(packed) == 0
