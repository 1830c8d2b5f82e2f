"""lmfast's own kernels inside ONNX Runtime: the custom-op library built from csrc/ortops.

Exports stay standard ONNX graphs that any ONNX Runtime runs. When lmfast opens one on the CPU
provider, `session_source` rewrites the graph in memory, swapping patterns that ONNX Runtime's CPU
provider runs slowly for lmfast's ops (domain "lmfast"), and registers the library on the session:

- `Cast(bfloat16 weight) -> MatMul / Gemm(transB=1)` (what `--precision bf16` writes) becomes
  `lmfast.Bf16MatMul(A, W[N, K] in bf16)`, which reads 2 bytes per weight where ONNX Runtime
  folds the Cast into an fp32 copy and reads 4.

Without the library (no headers or compiler at install time), lmfast runs ONNX Runtime's own ops
and logs that once; LMFAST_REQUIRE_NATIVE=1 makes it an error. LMFAST_NATIVE_OPS=0 turns the
swap off (the stock-op side of a comparison); LMFAST_ORTOPS_ISA=scalar forces the portable path.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DOMAIN = "lmfast"
_LIBRARY_GLOB = "_ortops*.so"
_PROTOBUF_LIMIT = 2**31 - 1
"""A rewritten graph goes to ONNX Runtime as one serialized protobuf, which cannot exceed this."""


class NativeOpsMissing(RuntimeError):
    """LMFAST_REQUIRE_NATIVE=1 but the custom-op library (or onnx, to rewrite graphs) is missing."""


def _required() -> bool:
    return os.environ.get("LMFAST_REQUIRE_NATIVE") == "1"


def enabled_by_env() -> bool:
    """LMFAST_NATIVE_OPS=0 turns lmfast's ops off; anything else (or unset) leaves them on."""
    return os.environ.get("LMFAST_NATIVE_OPS", "1") != "0"


@functools.cache
def library_path() -> Path | None:
    """The built library, or None (logged once) where the build was skipped or failed.

    Raises:
        NativeOpsMissing: LMFAST_REQUIRE_NATIVE=1 and no library was built.
    """
    found = sorted(Path(__file__).parent.glob(_LIBRARY_GLOB))
    if found:
        return found[0]
    message = (
        "lmfast's ONNX Runtime ops are not built (csrc/ortops: python setup.py build_ext --inplace, "
        "headers from scripts/ort_headers.sh); running ONNX Runtime's own ops"
    )
    if _required():
        raise NativeOpsMissing(f"LMFAST_REQUIRE_NATIVE=1: {message}")
    logger.warning(message)
    return None


def isa() -> str | None:
    """The kernel path calls take now: "avx2" or "scalar" (None without the library)."""
    path = library_path()
    if path is None:
        return None
    function = ctypes.CDLL(str(path)).lmfast_ortops_isa
    function.restype = ctypes.c_char_p
    return function().decode()


def bf16_matmul_reference(a: np.ndarray, weight_bits: np.ndarray) -> np.ndarray:
    """What lmfast.Bf16MatMul computes, in NumPy: A[..., K] times W[N, K]^T, W given as the upper
    16 bits of fp32 values (bfloat16), summed in float64 and rounded to fp32."""
    weight = (weight_bits.astype(np.uint32) << 16).view(np.float32)
    return (a.astype(np.float64) @ weight.astype(np.float64).T).astype(np.float32)


def _initializers(graph: Any) -> dict[str, Any]:
    return {tensor.name: tensor for tensor in graph.initializer}


def _consumers(graph: Any) -> dict[str, list[tuple[Any, int]]]:
    users: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            users.setdefault(name, []).append((node, position))
    for output in graph.output:
        users.setdefault(output.name, []).append((None, 0))
    return users


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _plain_linear(node: Any, position: int) -> str | None:
    """How `node` uses its input `position` as a weight: "kn" (MatMul's B[K, N]), "nk" (Gemm's
    transposed B without bias or scaling), or None (some other use)."""
    if position != 1:
        return None
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
        return "kn"
    if (
        node.op_type == "Gemm"
        and node.domain in ("", "ai.onnx")
        and len(node.input) == 2
        and _attribute(node, "transB", 0) == 1
        and _attribute(node, "transA", 0) == 0
        and _attribute(node, "alpha", 1.0) == 1.0
    ):
        return "nk"
    return None


def swap_bf16_matmuls(model: Any) -> int:
    """Rewrite `model` (an onnx ModelProto, in place): each MatMul / Gemm(transB=1) whose weight is a
    Cast of a 2-D bfloat16 initializer becomes lmfast.Bf16MatMul over that weight in [N, K]
    (transposed once here for MatMul). Casts left without users are dropped. Returns the count."""
    import onnx

    graph = model.graph
    initializers = _initializers(graph)
    consumers = _consumers(graph)
    added: dict[str, Any] = {}
    swapped, dropped = 0, set()
    for cast in list(graph.node):
        if cast.op_type != "Cast" or _attribute(cast, "to", 0) != onnx.TensorProto.FLOAT:
            continue
        source = initializers.get(cast.input[0])
        if source is None or source.data_type != onnx.TensorProto.BFLOAT16 or len(source.dims) != 2:
            continue
        if not source.raw_data:
            continue
        users = consumers.get(cast.output[0], [])
        for node, position in users:
            layout = None if node is None else _plain_linear(node, position)
            if layout is None:
                continue
            name = source.name if layout == "nk" else f"{source.name}_lmfast_nk"
            if layout == "kn" and name not in added:
                k, n = source.dims
                bits = np.frombuffer(source.raw_data, dtype=np.uint16).reshape(k, n)
                added[name] = onnx.helper.make_tensor(
                    name, onnx.TensorProto.BFLOAT16, [n, k], np.ascontiguousarray(bits.T).tobytes(), raw=True
                )
            operands = [node.input[0], name]
            del node.input[:]
            node.input.extend(operands)
            del node.attribute[:]
            node.op_type, node.domain = "Bf16MatMul", DOMAIN
            swapped += 1
        if all(node is not None and node.domain == DOMAIN for node, _ in users):
            dropped.add(id(cast))
    if not swapped:
        return 0
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(added.values())
    still_used = {name for node in graph.node for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name not in still_used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    if not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return swapped


def session_source(
    model_path: Path, options: Any, provider: str = "cpu", enabled: bool | None = None
) -> tuple[str | bytes, int]:
    """What to hand `ort.InferenceSession` for `model_path`, and how many ops were swapped: the
    path itself and 0 (nothing to swap, the CUDA provider, ops turned off or not built), or the
    rewritten graph's bytes, with the library registered on `options`.

    Raises:
        NativeOpsMissing: LMFAST_REQUIRE_NATIVE=1 and the library or the onnx package is missing.
    """
    if enabled is None:
        enabled = enabled_by_env()
    if provider != "cpu" or not enabled:
        return str(model_path), 0
    library = library_path()
    if library is None:
        return str(model_path), 0
    try:
        import onnx
    except ImportError as error:
        if _required():
            raise NativeOpsMissing("LMFAST_REQUIRE_NATIVE=1: lmfast's ONNX Runtime ops need onnx") from error
        _log_no_onnx()
        return str(model_path), 0
    model = onnx.load(str(model_path))
    swapped = swap_bf16_matmuls(model)
    if not swapped:
        return str(model_path), 0
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        logger.warning(
            "%s: the rewritten graph exceeds protobuf's 2 GiB; running ONNX Runtime's ops", model_path
        )
        return str(model_path), 0
    options.register_custom_ops_library(str(library))
    logger.info("%s: %d ops swapped for lmfast's (%s kernels)", model_path, swapped, isa())
    return model.SerializeToString(), swapped


@functools.cache
def _log_no_onnx() -> None:
    logger.warning(
        "lmfast's ONNX Runtime ops need the onnx package to rewrite graphs; running ONNX Runtime's"
    )
