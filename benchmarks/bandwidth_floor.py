"""The fastest a batch-1 fp32 decode step can be on this machine: every weight read once.

A decode step at batch 1 multiplies one token's activations by every weight matrix of the model,
so it must stream all fp32 weights from memory (the 82M model's 324 MB are ten times the L3
cache). This builds an ONNX Runtime graph holding only those matrix products, at the benchmark
models' shapes, with lmfast's session settings, and times it: no attention, no norms, no Python.
The result bounds what any fp32 implementation reaches here, and with HF `generate`'s time
(`bench_inference.py`) the largest speed-up possible.

    python benchmarks/bandwidth_floor.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_inference import SHAPES  # noqa: E402

VOCAB = 50257


def _weight_chain(n_layer: int, n_embd: int):
    """(ONNX model bytes, weight bytes): per layer qkv, proj, fc, fc-proj; then the lm_head."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, initializers, current = [], [], "x"
    shapes = [(n_embd, 3 * n_embd), (n_embd, n_embd), (n_embd, 4 * n_embd), (4 * n_embd, n_embd)]
    value_info = helper.make_tensor_value_info
    for layer in range(n_layer):
        for index, (rows, columns) in enumerate(shapes):
            name = f"w{layer}_{index}"
            initializers.append(
                numpy_helper.from_array(rng.standard_normal((rows, columns), np.float32), name)
            )
            current_out = f"{name}_out"
            nodes.append(helper.make_node("MatMul", [current, name], [current_out]))
            current = current_out
            if index == 0:  # qkv is 3 * n_embd wide: keep n_embd columns for the next product
                nodes.append(helper.make_node("Slice", [current, "zero", "width", "axis"], [f"{name}_q"]))
                current = f"{name}_q"
    lm_head = rng.standard_normal((VOCAB, n_embd), np.float32)
    initializers.append(numpy_helper.from_array(lm_head, "lm_head"))
    nodes.append(helper.make_node("Gemm", [current, "lm_head"], ["logits"], transB=1))
    for name, value in (("zero", 0), ("width", n_embd), ("axis", 1)):
        initializers.append(numpy_helper.from_array(np.array([value], np.int64), name))
    graph = helper.make_graph(
        nodes,
        "weight_chain",
        [value_info("x", TensorProto.FLOAT, [1, n_embd])],
        [value_info("logits", TensorProto.FLOAT, [1, VOCAB])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    weight_bytes = 4 * (n_layer * sum(r * c for r, c in shapes) + VOCAB * n_embd)
    return model.SerializeToString(), weight_bytes


def measure(threads: int, repeats: int = 30, rounds: int = 7) -> dict[str, dict[str, float]]:
    import onnxruntime as ort

    from lmfast.generation.onnx_backend import session_options

    results = {}
    for name, shape in SHAPES.items():
        model, weight_bytes = _weight_chain(shape["n_layer"], shape["n_embd"])
        session = ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
        feeds = {"x": np.ones((1, shape["n_embd"]), np.float32)}
        for _ in range(3):
            session.run(None, feeds)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                session.run(None, feeds)
            times.append((time.perf_counter() - start) / repeats)
        seconds = statistics.median(times)
        results[name] = {
            "weights_mb": round(weight_bytes / 1e6, 1),
            "floor_ms_per_step": round(1000 * seconds, 2),
            "gb_per_s": round(weight_bytes / seconds / 1e9, 1),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name, row in measure(args.threads).items():
        print(
            f"{name}: {row['weights_mb']} MB of fp32 weights per batch-1 step; reading them takes "
            f"{row['floor_ms_per_step']} ms ({row['gb_per_s']} GB/s, {args.threads} threads)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
