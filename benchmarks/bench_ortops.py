"""lmfast's ONNX Runtime ops against the stock ops they replace, one operator at a time.

A graph of `--layers` independent MatMuls of SmolLM2-135M's MLP shape (K 576, N 1536) over one
activation batch, so the weights (26.5M per graph) do not fit in cache, as in a decode step:

- bf16: lmfast.Bf16MatMul (bf16 weights, 2 bytes each) vs MatMul on the fp32 weights ONNX Runtime
  keeps after folding a `--precision bf16` export's Casts (4 bytes each);
- int8 / int4: lmfast.PackedQuantizedMatMul over the weights repacked as the graph rewrite does
  (`--nbits_layout file`: lmfast.QuantizedMatMul over the file's layout) vs com.microsoft.MatMulNBits
  at accuracy_level 4 (what `--quantize` writes) on the same weights, block 32, no zero points.

Each pair is first checked to agree (bf16: within fp32 rounding; quantized: within the activations'
int8 rounding), then run alternately, `--rounds` times; medians of wall and process CPU time
(CPU time counts both intra-op threads, spinning included: on a shared machine it is the steadier
figure). os.getloadavg() is printed beside the figures.

    python benchmarks/bench_ortops.py [--batches 1,8,32] [--threads 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

K, N, BLOCK = 576, 1536, 32


def _session(nodes, initializers, rows: int, threads: int, library: Path | None):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, K])],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None) for node in nodes],
        initializers,
    )
    opsets = [helper.make_opsetid(d, 1) for d in ("lmfast", "com.microsoft")] + [helper.make_opsetid("", 18)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if library is not None:
        options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def bf16_pair(rows: int, layers: int, threads: int, library: Path, rng) -> dict:
    from onnx import TensorProto, helper

    from lmfast.generation.native_ops import bf16_matmul_reference, bf16_tiles

    ours, stock, ours_init, stock_init, bits = [], [], [], [], []
    for i in range(layers):
        weight = rng.standard_normal((N, K)).astype(np.float32) * 0.05
        b = (weight.view(np.uint32) >> 16).astype(np.uint16)
        bits.append(b)
        widened = (b.astype(np.uint32) << 16).view(np.float32)
        tiles = bf16_tiles(b)
        ours_init.append(
            helper.make_tensor(f"W{i}", TensorProto.BFLOAT16, list(tiles.shape), tiles.tobytes(), raw=True)
        )
        stock_init.append(
            helper.make_tensor(f"W{i}", TensorProto.FLOAT, [K, N], widened.T.copy().tobytes(), raw=True)
        )
        ours.append(helper.make_node("Bf16MatMul", ["A", f"W{i}"], [f"Y{i}"], domain="lmfast", K=K, N=N))
        stock.append(helper.make_node("MatMul", ["A", f"W{i}"], [f"Y{i}"]))
    sessions = {
        "lmfast Bf16MatMul": _session(ours, ours_init, rows, threads, library),
        "MatMul fp32": _session(stock, stock_init, rows, threads, None),
    }
    a = rng.standard_normal((rows, K)).astype(np.float32)
    expected = bf16_matmul_reference(a, bits[0])
    for name, session in sessions.items():
        got = session.run(["Y0"], {"A": a})[0]
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-3):
            raise SystemExit(f"bench_ortops: {name} disagrees with the NumPy reference")
    return {"sessions": sessions, "input": a}


def nbits_pair(
    rows: int, layers: int, threads: int, library: Path, bits: int, rng, packed_layout: bool = True
) -> dict:
    from onnx import TensorProto, helper

    from lmfast.generation.quant_pack import pack_nbits

    blocks = K // BLOCK
    ours, stock, init, packed_init = [], [], [], []
    for i in range(layers):
        data = rng.integers(1, 256, size=(N, blocks, BLOCK * bits // 8), dtype=np.uint8)
        scales = (rng.random(N * blocks, dtype=np.float32) * 0.01).astype(np.float32)
        init += [
            helper.make_tensor(f"B{i}", TensorProto.UINT8, list(data.shape), data.tobytes(), raw=True),
            helper.make_tensor(f"S{i}", TensorProto.FLOAT, [N * blocks], scales.tobytes(), raw=True),
        ]
        attributes = {"K": K, "N": N, "bits": bits, "block_size": BLOCK}
        inputs = ["A", f"B{i}", f"S{i}"]
        if packed_layout:  # the layout the graph rewrite writes (lmfast.generation.quant_pack)
            repacked_data, repacked_scales, _ = pack_nbits(data, scales, None, N, K, bits, BLOCK)
            packed_init += [
                helper.make_tensor(
                    f"P{i}", TensorProto.UINT8, list(repacked_data.shape), repacked_data.tobytes(), raw=True
                ),
                helper.make_tensor(
                    f"PS{i}",
                    TensorProto.FLOAT,
                    list(repacked_scales.shape),
                    repacked_scales.tobytes(),
                    raw=True,
                ),
            ]
            ours.append(
                helper.make_node(
                    "PackedQuantizedMatMul",
                    ["A", f"P{i}", f"PS{i}"],
                    [f"Y{i}"],
                    domain="lmfast",
                    **attributes,
                )
            )
        else:
            ours.append(helper.make_node("QuantizedMatMul", inputs, [f"Y{i}"], domain="lmfast", **attributes))
        stock.append(
            helper.make_node(
                "MatMulNBits", inputs, [f"Y{i}"], domain="com.microsoft", accuracy_level=4, **attributes
            )
        )
    op = "PackedQuantizedMatMul" if packed_layout else "QuantizedMatMul"
    sessions = {
        f"lmfast {op} int{bits}": _session(
            ours, packed_init if packed_layout else init, rows, threads, library
        ),
        f"MatMulNBits int{bits} level 4": _session(stock, init, rows, threads, None),
    }
    a = rng.standard_normal((rows, K)).astype(np.float32)
    results = [session.run(["Y0"], {"A": a})[0] for session in sessions.values()]
    scale = np.abs(results[1]).max() + 1e-6
    if np.abs(results[0] - results[1]).max() > 0.05 * scale:  # both round the activations to int8
        raise SystemExit(f"bench_ortops: int{bits} QuantizedMatMul and MatMulNBits disagree")
    return {"sessions": sessions, "input": a}


def time_pair(pair: dict, rounds: int) -> dict[str, tuple[float, float]]:
    sessions, a = pair["sessions"], pair["input"]
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            sessions[name].run(None, {"A": a})
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]) * 1e3, statistics.median(cpu[name]) * 1e3) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--kinds", default="bf16,int8,int4")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--nbits_layout",
        choices=("packed", "file"),
        default="packed",
        help="int8/int4: PackedQuantizedMatMul over the repacked weights, or QuantizedMatMul over the file's",
    )
    args = parser.parse_args(argv)
    from lmfast.generation import native_ops

    library = native_ops.library_path()
    if library is None:
        print("bench_ortops: lmfast's ONNX Runtime ops are not built (python setup.py build_ext --inplace)")
        return 1
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, kernels {native_ops.isa()}, {args.layers} x [{K} x {N}] weights")
    print("| kind | batch | contender | wall ms | CPU ms | stock / lmfast (wall, CPU) | load |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        for rows in [int(b) for b in args.batches.split(",")]:
            if kind == "bf16":
                pair = bf16_pair(rows, args.layers, args.threads, library, rng)
            else:
                pair = nbits_pair(
                    rows,
                    args.layers,
                    args.threads,
                    library,
                    int(kind[3:]),
                    rng,
                    args.nbits_layout == "packed",
                )
            load = os.getloadavg()
            figures = time_pair(pair, args.rounds)
            (ours, (ours_wall, ours_cpu)), (_, (stock_wall, stock_cpu)) = figures.items()
            for name, (wall, cpu) in figures.items():
                ratio = f"{stock_wall / ours_wall:.2f}x, {stock_cpu / ours_cpu:.2f}x" if name == ours else ""
                print(
                    f"| {kind} | {rows} | {name} | {wall:.2f} | {cpu:.2f} | {ratio} | {load[0]:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
