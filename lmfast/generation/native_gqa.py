"""lmfast.GroupQueryAttention: the in-place cache's attention, swapped in for ONNX Runtime's.

The in-place export (lmfast/export/decoder.py, `BufferAttention`) runs every layer's attention as
one com.microsoft.GroupQueryAttention node bound to a preallocated buffer per layer. ONNX Runtime's
CPU kernel makes one task per (row, query head), so each key/value head is read once per query
head it serves (3 times for SmolLM2's 9 query / 3 key-value heads). lmfast's kernel
(csrc/ortops/gqa.cc) makes one task per (row, key/value head), reads the head once for all its
query heads, and reads only the row's filled columns. An fp16 cache (`--kv_cache_precision fp16`)
makes the node fp16 (the export casts q, k, v to fp16 and the output back); the kernel then reads
2 bytes per cached value, widened in registers, and computes in fp32 as ONNX Runtime's kernel does.
`gqa_reference` defines what it computes; `swap_group_query_attention` rewrites the nodes it covers
and leaves every other one in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmfast.generation.native_common import DOMAIN

_NEUTRAL = {
    "do_rotary": 0,
    "rotary_interleaved": 0,
    "local_window_size": -1,
    "softcap": 0.0,
    "smooth_softmax": 0,
    "qk_output": 0,
}
"""Attributes the kernel does not implement, with the values that mean "off": a node holding any
other value (or any attribute not named here or in `_KEPT`) keeps ONNX Runtime's op."""
_KEPT = ("num_heads", "kv_num_heads", "scale")


def gqa_past(seqlens_k: np.ndarray, sequence_length: int, total_sequence_length: int) -> np.ndarray:
    """Each row's first new column: 0 for a first prompt (sequence_length == total_sequence_length),
    else seqlens_k + 1 - sequence_length, as ONNX Runtime's kernel places them."""
    if sequence_length == total_sequence_length:
        return np.zeros(len(seqlens_k), dtype=np.int64)
    return seqlens_k.astype(np.int64) + 1 - sequence_length


def gqa_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    past_k: np.ndarray,
    past_v: np.ndarray,
    seqlens_k: np.ndarray,
    total_sequence_length: int,
    num_heads: int,
    kv_num_heads: int,
    scale: float = 0.0,
    in_place: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What lmfast.GroupQueryAttention computes, in NumPy (float64, rounded to fp32, then to the
    inputs' dtype: fp16 inputs give an fp16 output and fp16 present buffers).

    q (B, S, H*D), k and v (B, S, Hkv*D), past_k and past_v (B, Hkv, L, D). Row b's S new keys
    and values go to columns [p, p + S) with p = `gqa_past`; query s of row b, head n, attends
    with softmax(scale * q . k) over columns [0, p + s] of key/value head n // (H / Hkv); scale 0
    means 1 / sqrt(D). Returns (y (B, S, H*D), present_k, present_v (B, Hkv, max(total, L), D)):
    the present buffers hold the past's columns [0, p), the new ones, and zeros after them, or
    with `in_place` (present bound to past's buffer) the past's own values after them.
    """
    dtype = past_k.dtype
    batch, seq, width = q.shape
    d = width // num_heads
    groups = num_heads // kv_num_heads
    scale = scale or 1.0 / np.sqrt(np.float32(d))
    length = max(total_sequence_length, past_k.shape[2])
    pasts = gqa_past(seqlens_k, seq, total_sequence_length)
    presents = []
    for past, new in ((past_k, k), (past_v, v)):
        if in_place:
            present = past.copy()
        else:
            present = np.zeros((batch, kv_num_heads, length, d), dtype=dtype)
        for b, p in enumerate(pasts):
            present[b, :, :p] = past[b, :, :p]
            present[b, :, p : p + seq] = new[b].reshape(seq, kv_num_heads, d).transpose(1, 0, 2)
        presents.append(present)
    keys, values = (p.astype(np.float64) for p in presents)
    y = np.zeros((batch, seq, num_heads, d), dtype=np.float64)
    for b, p in enumerate(pasts):
        queries = q[b].astype(np.float64).reshape(seq, kv_num_heads, groups, d)
        for s in range(seq):
            causal = p + s + 1
            scores = np.einsum("hgd,htd->hgt", queries[s], keys[b, :, :causal]) * float(scale)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probabilities = scores / scores.sum(axis=-1, keepdims=True)
            y[b, s] = np.einsum("hgt,htd->hgd", probabilities, values[b, :, :causal]).reshape(num_heads, d)
    return y.reshape(batch, seq, width).astype(np.float32).astype(dtype), presents[0], presents[1]


def _value_types(graph: Any) -> dict[str, int]:
    return {
        info.name: info.type.tensor_type.elem_type
        for info in [*graph.input, *graph.value_info, *graph.output]
        if info.type.HasField("tensor_type")
    }


def swappable(node: Any, types: dict[str, int]) -> bool:
    """Whether lmfast.GroupQueryAttention covers `node`: com.microsoft.GroupQueryAttention over fp32
    or fp16 buffers with separate q, k, v, no cos/sin caches or later inputs, no attention-probability
    output, and only num_heads, kv_num_heads, scale or `_NEUTRAL` attributes at their "off" values."""
    import onnx

    if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
        return False
    inputs = list(node.input)
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = list(node.output)
    while outputs and not outputs[-1]:
        outputs.pop()
    if len(inputs) != 7 or not all(inputs) or len(outputs) != 3:
        return False
    if types.get(inputs[3]) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return False
    for attribute in node.attribute:
        if attribute.name in _KEPT:
            continue
        if attribute.name not in _NEUTRAL:
            return False
        if onnx.helper.get_attribute_value(attribute) != _NEUTRAL[attribute.name]:
            return False
    return True


def swap_group_query_attention(model: Any) -> int:
    """Rewrite `model` (an onnx ModelProto, in place): each GroupQueryAttention node `swappable`
    covers becomes lmfast.GroupQueryAttention over the same inputs and outputs, with num_heads,
    kv_num_heads and scale (0: 1/sqrt(head_size)). Returns the count."""
    import onnx

    graph = model.graph
    types = _value_types(graph)
    swapped = 0
    for node in graph.node:
        if not swappable(node, types):
            continue
        values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        inputs, outputs = list(node.input)[:7], list(node.output)[:3]
        del node.input[:]
        node.input.extend(inputs)
        del node.output[:]
        node.output.extend(outputs)
        del node.attribute[:]
        node.attribute.extend(
            [
                onnx.helper.make_attribute("num_heads", int(values["num_heads"])),
                onnx.helper.make_attribute("kv_num_heads", int(values["kv_num_heads"])),
                onnx.helper.make_attribute("scale", float(values.get("scale", 0.0))),
            ]
        )
        node.op_type, node.domain = "GroupQueryAttention", DOMAIN
        swapped += 1
    if swapped and not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return swapped
