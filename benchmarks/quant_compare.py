"""`quant_quality.py --model_dir --dataset`: lmfast's int4 recipes vs llama.cpp's, deployed files.

See quant_quality.py's docstring for what is measured; this module holds the comparison so the
torch-only rounding study there stays short.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_engines import export_engine, llama_engine, llama_gguf, time_cell
from lmfast.models.dataset import PreparedDataset

LMFAST_VARIANTS: dict[str, dict[str, Any]] = {  # variant -> ExportConfig overrides
    "lmfast-plain": {"quantize": "int4", "recipe": "plain"},
    "lmfast-mixed": {"quantize": "int4", "recipe": "mixed"},
    "lmfast-mixed-calibrated-static": {
        "quantize": "int4",
        "recipe": "mixed",
        "calibration_dataset": True,
        "allocation": "static",
    },
    # the default: the 8-bit parts chosen by measured sensitivity within the static rule's bits
    "lmfast-mixed-calibrated": {"quantize": "int4", "recipe": "mixed", "calibration_dataset": True},
    # the same within the bits per weight of llama.cpp's Q4_K_M of the same model
    "lmfast-mixed-calibrated-q4km-size": {
        "quantize": "int4",
        "recipe": "mixed",
        "calibration_dataset": True,
        "bits_per_weight": "llama-q4_k_m",
    },
}
LLAMA_TYPES = {"q4_0": "Q4_0", "q4_k_m": "Q4_K_M"}


def compare(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    windows = held_out_windows(args.dataset, args.tokens, args.window)
    reference = [reference_log_probs(model, w) for w in windows]
    targets = np.concatenate([w[1:] for w in windows])
    reference_nll = -np.concatenate(
        [lp[np.arange(len(w) - 1), w[1:]] for lp, w in zip(reference, windows, strict=True)]
    )
    reference_ppl = float(np.exp(reference_nll.mean()))
    print(
        f"{args.model_dir.name}: {len(targets)} held-out tokens of {args.dataset} (valid), windows of "
        f"{args.window}; fp32 ppl {reference_ppl:.3f}; load {_load()}",
        flush=True,
    )
    variants = [v for v in args.variants.split(",") if v]
    files: dict[str, Path] = {}
    for variant in variants:
        started = time.perf_counter()
        files[variant] = (
            lmfast_variant(variant, model, args, work)
            if variant.startswith("lmfast-")
            else llama_variant(variant, tokenizer, args, work)
        )
        print(f"built {variant} in {time.perf_counter() - started:.0f} s: {files[variant]}", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    for variant, path in files.items():
        log_probs = (
            lmfast_log_probs(path, windows, args.threads)
            if variant.startswith("lmfast-")
            else (llama_log_probs(path, windows, args.threads))
        )
        rows[variant] = score(reference, log_probs, windows, reference_ppl)
        rows[variant].update(
            bits_per_weight=onnx_bits_per_weight(path)
            if variant.startswith("lmfast-")
            else gguf_bits_per_weight(path),
            file_bytes=_file_bytes(path),
        )
        print(f"quality {variant}: {json.dumps(rows[variant])}", flush=True)
    if args.decode_tokens > 1:
        decode_speed(files, rows, tokenizer, args)
    print_table(args, rows, reference_ppl, len(targets))
    if args.json:
        args.json.write_text(json.dumps({"reference_ppl": reference_ppl, "rows": rows}, indent=2) + "\n")
    return 0


def held_out_windows(dataset: Path, tokens: int, window: int) -> list[np.ndarray]:
    """Windows of the valid split's token stream holding at least `tokens` predicted tokens."""
    split = PreparedDataset(dataset).split("valid")
    count = -(-tokens // (window - 1)) * window
    stream = np.asarray(split.corpus[:count], dtype=np.int64)
    if len(stream) < count:
        raise ValueError(f"{dataset}: the valid split has {len(stream)} tokens, {count} needed")
    return [stream[s : s + window] for s in range(0, count, window)]


def reference_log_probs(model: Any, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = model(torch.from_numpy(ids)[None]).logits[0].float()
    return torch.log_softmax(logits, -1)[:-1].numpy()


def score(reference, log_probs, windows, reference_ppl: float) -> dict[str, float]:
    kl, nll, agree = [], [], []
    for ref, lp, ids in zip(reference, log_probs, windows, strict=True):
        kl.append((np.exp(ref) * (ref - lp)).sum(-1))
        nll.append(-lp[np.arange(len(ids) - 1), ids[1:]])
        agree.append(ref.argmax(-1) == lp.argmax(-1))
    ppl = float(np.exp(np.concatenate(nll).mean()))
    return {
        "perplexity": ppl,
        "perplexity_delta": ppl - reference_ppl,
        "kl_per_token": float(np.concatenate(kl).mean()),
        "top1_agreement": float(np.concatenate(agree).mean()),
    }


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))).astype(np.float32)


# --- lmfast ---------------------------------------------------------------------------------------


def lmfast_variant(variant: str, model: Any, args: argparse.Namespace, work: Path) -> Path:
    """The variant's export, derived from one fp32 export by the exporter's own `apply_tier`."""
    import onnx
    from transformers import AutoTokenizer

    from lmfast.export import ExportConfig, export_onnx
    from lmfast.export.onnx import _quantization, _save, apply_tier

    fp32 = work / "lmfast-fp32"
    if not (fp32 / "export.json").is_file():
        export_onnx(ExportConfig(source=args.model_dir, output=fp32, overwrite=True, parity_steps=4))
    output = work / variant
    if (output / "export.json").is_file():
        return output
    overrides = dict(LMFAST_VARIANTS[variant])
    if overrides.pop("calibration_dataset", None):
        overrides.update(calibration_dataset=args.dataset, calibration_samples=args.calibration_samples)
    if isinstance(overrides.get("bits_per_weight"), str):  # another variant's measured size
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        overrides["bits_per_weight"] = gguf_bits_per_weight(
            llama_variant(overrides["bits_per_weight"], tokenizer, args, work)
        )
    config = ExportConfig(source=args.model_dir, output=output, **overrides)
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(fp32, staging, ignore=shutil.ignore_patterns("model.onnx*"))
    measured: dict[str, Any] = {}
    _save(apply_tier(onnx.load(str(fp32 / "model.onnx")), config, model, measured), staging / "model.onnx")
    description = json.loads((fp32 / "export.json").read_text(encoding="utf-8"))
    description.update(quantize=config.quantize, quantization=_quantization(config, measured), parity=None)
    (staging / "export.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    staging.rename(output)
    return output


def lmfast_log_probs(directory: Path, windows: list[np.ndarray], threads: int) -> list[np.ndarray]:
    from lmfast.generation.onnx_backend import OnnxBackend

    backend = OnnxBackend.load(directory, num_threads=threads)
    out = []
    for ids in windows:
        n = len(ids)
        logits, _ = backend.forward(
            ids[None], np.ones((1, n), np.int64), np.arange(n, dtype=np.int64)[None], None, all_logits=True
        )
        out.append(_log_softmax(logits[0, :-1]))
    return out


def onnx_bits_per_weight(directory: Path) -> float:
    """Stored bits of every MatMulNBits (levels, scales, zero points) / the weights they hold."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(directory / "model.onnx"))
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    bits = weights = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            bits += 8 * sum(sizes.get(name, 0) for name in node.input[1:])
            weights += attributes["K"] * attributes["N"]
    return bits / max(1, weights)


# --- llama.cpp ------------------------------------------------------------------------------------


def llama_variant(variant: str, tokenizer: Any, args: argparse.Namespace, work: Path) -> Path:
    """llama-quantize of llama.cpp's own f32 conversion, with `-imatrix` an importance matrix
    from llama-imatrix over the calibration samples lmfast's calibration draws (same seed)."""
    kind = variant.removeprefix("llama-").removesuffix("-imatrix")
    target = work / f"{variant}.gguf"
    if target.is_file():
        return target
    f32 = llama_gguf(_llama_readable(args.model_dir, work), work, "f32", args.llama_cpp_src)
    binaries = args.llama_cpp_src / "build" / "bin"
    command = [str(binaries / "llama-quantize")]
    if variant.endswith("-imatrix"):
        command += ["--imatrix", str(importance_matrix(f32, tokenizer, args, work))]
    command += [str(f32), str(target), LLAMA_TYPES[kind], str(args.threads)]
    _run(command)
    return target


def _llama_readable(model_dir: Path, work: Path) -> Path:
    """The HF dir as convert_hf_to_gguf.py reads it: its GPT-2 path needs `n_ctx`, which
    transformers 5 no longer writes (it is `n_positions`); links to the other files."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "gpt2" or "n_ctx" in config:
        return model_dir
    target = work / "hf-for-llama.cpp"
    target.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.is_file() and path.name != "config.json" and not (target / path.name).exists():
            (target / path.name).symlink_to(path.resolve())
    config["n_ctx"] = config["n_positions"]
    (target / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


def importance_matrix(f32: Path, tokenizer: Any, args: argparse.Namespace, work: Path) -> Path:
    target = work / "imatrix.gguf"
    if target.is_file():
        return target
    text = work / "calibration.txt"
    split = PreparedDataset(args.dataset).split("train")
    chosen = np.sort(np.random.default_rng(0).permutation(len(split))[: args.calibration_samples])
    text.write_text("\n\n".join(tokenizer.decode(split[int(i)]) for i in chosen) + "\n", encoding="utf-8")
    binaries = args.llama_cpp_src / "build" / "bin"
    command = [str(binaries / "llama-imatrix"), "-m", str(f32), "-f", str(text), "-o", str(target)]
    _run([*command, "-c", "128", "-b", "128", "-t", str(args.threads), "--no-ppl"])
    return target


def llama_log_probs(gguf: Path, windows: list[np.ndarray], threads: int) -> list[np.ndarray]:
    """Every position's logits of each window (one sequence, cache cleared between windows)."""
    import llama_cpp as lc

    llama_engine(gguf, "int4", threads, 1, 8)  # initializes the backend and silences its log
    model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = max(len(w) for w in windows)
    params.n_threads = params.n_threads_batch = threads
    context = lc.llama_init_from_model(model, params)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(params.n_batch, 0, 1)
    out = []
    for ids in windows:
        lc.llama_memory_clear(lc.llama_get_memory(context), True)
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = int(token), i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, True
        if lc.llama_decode(context, batch) != 0:
            raise RuntimeError(f"llama_decode failed on {gguf}")
        logits = np.ctypeslib.as_array(lc.llama_get_logits(context), shape=(len(ids), n_vocab))
        out.append(_log_softmax(logits[:-1]))
    lc.llama_batch_free(batch)
    lc.llama_free(context)
    lc.llama_model_free(model)
    return out


def gguf_bits_per_weight(path: Path) -> float:
    """Stored bits / weights of the GGUF's matrices: every 2-D block weight and the output head
    (token_embd where the output is tied to it), as `onnx_bits_per_weight` counts lmfast's."""
    import sys

    from_src = os.environ.get("LLAMA_CPP_SRC")
    if from_src:
        sys.path.insert(0, str(Path(from_src) / "gguf-py"))
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    chosen = [t for n, t in tensors.items() if (n.startswith("blk.") and len(t.shape) == 2) or n == head]
    return 8 * sum(int(t.n_bytes) for t in chosen) / sum(int(t.n_elements) for t in chosen)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(command[0]).name} failed: {' | '.join(tail)}")


# --- speed and report -----------------------------------------------------------------------------


def decode_speed(
    files: dict[str, Path], rows: dict[str, dict], tokenizer: Any, args: argparse.Namespace
) -> None:
    """Batch-1 decode ms/step of every variant, alternating in one run (bench_engines.time_cell)."""
    from benchmarks.bench_engines import text_ids

    engines = []
    for variant, path in files.items():
        if variant.startswith("lmfast-"):
            engine = export_engine(path, "lmfast", variant, args.threads)
        else:
            engine = llama_engine(path, "int4", args.threads, 1, 32 + args.decode_tokens + 8)
        engines.append(dataclasses.replace(engine, engine=variant, tier="batch 1"))
    prompt = [text_ids(tokenizer, 32, 50_000)]
    load = _load()
    cells = time_cell(engines, prompt, args.decode_tokens, args.rounds)
    for name, cell in cells.items():
        rows[name.removesuffix(" batch 1")].update(decode_ms_per_step=cell["ms_per_step"], decode_load=load)


def print_table(args, rows: dict[str, dict], reference_ppl: float, tokens: int) -> None:
    print(
        f"\n### {args.model_dir.name}: {tokens} held-out tokens, fp32 ppl {reference_ppl:.3f}, "
        f"{args.threads} threads, load {_load()}"
    )
    print(
        "| variant | bpw (matrices) | file MB | ppl | ppl Δ | KL / token | top-1 = fp32 | batch-1 ms/step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, row in rows.items():
        speed = f"{row['decode_ms_per_step']:.1f}" if "decode_ms_per_step" in row else "-"
        print(
            f"| {variant} | {row['bits_per_weight']:.3f} | {row['file_bytes'] / 1e6:.1f} | {row['perplexity']:.3f} "
            f"| {row['perplexity_delta']:+.3f} | {row['kl_per_token']:.3g} | {row['top1_agreement']:.2%} | {speed} |",
            flush=True,
        )


def _file_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("model.onnx*"))
    return path.stat().st_size


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
