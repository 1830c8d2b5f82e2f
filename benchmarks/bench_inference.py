"""Inference benchmark: HF `generate` vs lmfast's decode loop on torch, ONNX fp32 and ONNX int8.

Random-weight GPT-2 models of the distilgpt2 shape (6 layers, 768 wide, 82M) and a small one
(under 30M); prompt 32 tokens, 64 new tokens, greedy, batch 1 and 8; every contender at the same
explicit thread count. The ONNX exports are made with `--optimize`; ONNX Runtime runs with
lmfast's session settings (spinning bounded to 20 us, dynamic parallel blocks). Greedy tokens of
lmfast torch and ONNX fp32 are checked against HF `generate` before anything is timed (int8
reports its token agreement instead). Contenders alternate within each round, in an order that
rotates from round to round, and the median round is reported.

    python benchmarks/bench_inference.py [--quick] [--threads 2] [--json PATH] [--cuda] [--ablations]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPT_TOKENS = 32
NEW_TOKENS = 64
SHAPES = {
    "distilgpt2-82M": {"n_layer": 6, "n_embd": 768, "n_head": 12},
    "small-16M": {"n_layer": 4, "n_embd": 256, "n_head": 4},
}


def _make_model_dir(root: Path, name: str, shape: dict[str, int]) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    directory = root / name
    torch.manual_seed(0)
    config = GPT2Config(n_positions=1024, vocab_size=50257, **shape)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(REPO / "lmfast" / "assets" / "gpt2").save_pretrained(directory)
    return directory


def _export(
    source: Path, output: Path, quantize: str = "none", precision: str = "fp32", attention: str = "plain"
) -> Path:
    """`lmfast export onnx --optimize` (ONNX Runtime's fusions; fp32 parity still enforced)."""
    from lmfast.export import ExportConfig, export_onnx

    config = ExportConfig(
        source=source,
        output=output,
        quantize=quantize,
        precision=precision,
        attention=attention,
        optimize=True,
        parity_steps=8,
        accept_quality_loss=True,  # lossy tiers report their token agreement in the table instead
    )
    return export_onnx(config)


def _lmfast_runner(generator, prompts: np.ndarray):
    """Generate NEW_TOKENS greedily for every prompt row with the DecodeSession; returns tokens."""
    from lmfast.generation import GenerationParams
    from lmfast.generation.session import DecodeSession

    # no EOS: every contender generates exactly NEW_TOKENS tokens
    info = dataclasses.replace(generator.info, eos_token_ids=())
    params = GenerationParams(max_new_tokens=NEW_TOKENS, temperature=0.0)

    def run() -> np.ndarray:
        session = DecodeSession(generator.backend, generator.codec, info, max_batch_size=len(prompts))
        rows = [session.add_token_ids(p.tolist(), params)[0] for p in prompts]
        out: dict[int, list[int]] = {r: [] for r in rows}
        while len(session):
            for event in session.step():
                out[event.row_id].append(event.token_id)
        return np.array([out[r] for r in rows])

    return run


def _hf_runner(model, prompts: np.ndarray, device: str = "cpu"):
    import torch

    model.generation_config.eos_token_id = None
    input_ids = torch.from_numpy(prompts).to(device)
    mask = torch.ones_like(input_ids)

    def run() -> np.ndarray:
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
        return out[:, PROMPT_TOKENS:].cpu().numpy()

    return run


def _time(runners: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds per full generation. Contenders alternate within each round, and the order
    rotates from round to round, so no contender always runs first (or always after HF)."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = runners[name]
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def bench_model(
    name: str,
    shape: dict[str, int],
    threads: int,
    batches: list[int],
    rounds: int,
    cuda: bool,
    ablations: bool = False,
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from lmfast.generation import Generator

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = _make_model_dir(root, name, shape)
        fp32_dir = _export(source, root / "fp32")
        int8_dir = _export(source, root / "int8", quantize="int8")
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        params = sum(p.numel() for p in hf_model.parameters())
        generators = {
            "lmfast_torch": Generator.load(source, backend="torch", num_threads=threads),
            "lmfast_onnx_fp32": Generator.load(fp32_dir, num_threads=threads),
            "lmfast_onnx_int8": Generator.load(int8_dir, num_threads=threads),
        }
        if ablations:  # each ablation swaps one of lmfast's choices for its alternative
            fused_dir = _export(source, root / "fused", attention="fused")
            generators["ablation_fused_attention"] = Generator.load(fused_dir, num_threads=threads)
            generators["ablation_spinning_off"] = Generator.load(fp32_dir, num_threads=threads, spin_us=0)
        cuda_generators = {}
        if cuda:
            cuda_generators["lmfast_onnx_fp32_cuda"] = Generator.load(fp32_dir, provider="cuda")
            fp16_dir = _export(source, root / "fp16", precision="fp16")
            cuda_generators["lmfast_onnx_fp16_cuda"] = Generator.load(fp16_dir, provider="cuda")
        results = []
        for batch in batches:
            prompts = np.random.default_rng(batch).integers(0, 50257, (batch, PROMPT_TOKENS))
            runners = {"hf_generate": _hf_runner(hf_model, prompts)}
            runners.update({k: _lmfast_runner(g, prompts) for k, g in generators.items()})
            if cuda:
                cuda_model = (
                    AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval().to("cuda")
                )
                runners["hf_generate_cuda"] = _hf_runner(cuda_model, prompts, "cuda")
                runners.update({k: _lmfast_runner(g, prompts) for k, g in cuda_generators.items()})
            # correctness before timing (also the warm-up)
            reference = runners["hf_generate"]()
            agreement = {}
            for key, run in runners.items():
                tokens = run()
                agreement[key] = float((tokens == reference).mean())
                exact = key.startswith("ablation_") or key in (
                    "lmfast_torch",
                    "lmfast_onnx_fp32",
                    "lmfast_onnx_fp32_cuda",
                    "hf_generate_cuda",
                )
                if exact and not np.array_equal(tokens, reference):
                    raise AssertionError(f"{name} batch {batch}: {key} greedy tokens differ from HF generate")
            medians = _time(runners, rounds)
            rows = {}
            for key, seconds in medians.items():
                rows[key] = {
                    "seconds": round(seconds, 4),
                    "tokens_per_s": round(batch * NEW_TOKENS / seconds, 1),
                    "ms_per_token_step": round(1000 * seconds / NEW_TOKENS, 2),
                    "speedup_vs_hf_generate": round(medians["hf_generate"] / seconds, 2),
                    "token_agreement_with_hf": agreement[key],
                }
                if "int8" not in key:  # every fp32 weight is read once per step: at batch 1 this
                    # is the memory bandwidth the contender reaches (the 82M model is bound by it)
                    rows[key]["fp32_weights_gb_per_s"] = round(4 * params * NEW_TOKENS / seconds / 1e9, 1)
            results.append({"name": f"{name} batch {batch}", "batch": batch, "contenders": rows})
            progress = ", ".join(f"{k} {v['ms_per_token_step']} ms" for k, v in rows.items())
            print(f"[bench_inference] {name} batch {batch}: {progress}", file=sys.stderr, flush=True)
    return {"model": name, "parameters": params, "threads": threads, "runs": results}


def run(
    quick: bool,
    threads: int = 2,
    cuda: bool | None = None,
    rounds: int | None = None,
    ablations: bool = False,
) -> dict:
    """Run the benchmark; quick: the small model only, 1 timed round (after the correctness run,
    which is also the warm-up); ablations: also the ONNX fp32
    export with `--attention fused`, and with ONNX Runtime's spinning off."""
    import onnxruntime as ort

    if cuda is None:
        cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    shapes = {k: v for k, v in SHAPES.items() if not quick or k.startswith("small")}
    rounds = rounds or (1 if quick else 5)
    models = [
        bench_model(name, shape, threads, [1, 8], rounds, cuda, ablations) for name, shape in shapes.items()
    ]
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "threads": threads,
        "decoding": "greedy",
        "models": models,
    }


def _print_table(result: dict) -> None:
    header = (
        f"{'model / batch':<26}{'contender':<24}{'tok/s':>9}{'ms/step':>9}{'x HF':>7}{'agree':>7}"
        f"{'weights GB/s':>14}"
    )
    print(header)
    print("-" * len(header))
    for model in result["models"]:
        for run_ in model["runs"]:
            for key, row in run_["contenders"].items():
                print(
                    f"{run_['name']:<26}{key:<24}{row['tokens_per_s']:>9.1f}{row['ms_per_token_step']:>9.2f}"
                    f"{row['speedup_vs_hf_generate']:>7.2f}{row['token_agreement_with_hf']:>7.2f}"
                    f"{row.get('fp32_weights_gb_per_s', ''):>14}"
                )
    print(
        f"(threads={result['threads']}, prompt {result['prompt_tokens']}, new {result['new_tokens']}, greedy;"
        " weights GB/s: fp32 weight bytes read per step / step time)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model only, 1 round")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every contender")
    parser.add_argument("--cuda", action="store_true", default=None, help="also time the CUDA provider")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (median kept)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also time ONNX fp32 exported with --attention fused, and with spinning off",
    )
    args = parser.parse_args(argv)
    result = run(
        args.quick, threads=args.threads, cuda=args.cuda, rounds=args.rounds, ablations=args.ablations
    )
    _print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
