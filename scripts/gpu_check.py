"""The prepared device check (issue 32): one run on a lent GPU that measures what lmfast claims there.

Run `bash scripts/gpu_check.sh --prepare` on a CPU machine first: it tokenizes the bundled Nietzsche
documents into `data/bench/gpu_check/` (a few MiB, carried to the GPU machine) and, with
`--wheels`, downloads the serving wheels the GPU image lacks into `.whl/`. Then, on the GPU,
`bash scripts/gpu_check.sh` runs the phases below in priority order, each in its own process
under what is left of a time budget (`--budget_s`, 7.5 minutes by default), so a slow or failing
phase never costs the rest, and writes `report.json` and `report.md` to `$OUT` (or `--out`).
`--cpu_smoke` runs every phase at toy sizes on the CPU, to prove the script itself works.

Phases: equality (greedy CPU = CUDA and batch invariance of the torch backend), train_bf16 (the
train CLI, eager and compiled, vs a nanoGPT-style plain loop), decode (tokens/s at batch 1/8/64
vs HF `generate`), train_fp16, lora (a SmolLM2-shaped model), fsdp (one device), serve
(`lmfast serve --backend torch --provider cuda` under 1/16/64 concurrent clients).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "bench" / "gpu_check"
NIETZSCHE = REPO / "data" / "documents" / "nietzsche"
DEFAULT_BUDGET_S = 450
SERVE_WHEELS = [
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "uvicorn",
]


class Sizes:
    """What each phase runs: full sizes on a GPU, toy sizes for `--cpu_smoke`."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.train_model = "gpt2-tiny" if smoke else "gpt2"  # GPT-2 124M-shaped
        self.train_steps = 4 if smoke else 40
        self.train_batch = 4 if smoke else 16
        self.plain_steps = 4 if smoke else 30
        self.compile = not smoke
        self.decode_batches = (1, 2, 4) if smoke else (1, 8, 64)
        self.decode_new_tokens = 8 if smoke else 128
        self.clients = (1, 2, 4) if smoke else (1, 16, 64)
        self.serve_tokens = 8 if smoke else 64
        self.max_sample_length = 64 if smoke else 1024


def smollm2_shaped(vocab_size: int, smoke: bool, **overrides: Any) -> Any:
    """SmolLM2-135M's shape (30 layers, 576 wide, 9 heads, 3 KV heads) over the dataset's vocabulary."""
    from transformers import LlamaConfig

    shape = dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
    )
    if smoke:
        shape = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    return LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_theta=100000.0, initializer_range=0.3 if smoke else 0.041, bos_token_id=0, eos_token_id=0,
        **{**shape, **overrides},
    )  # fmt: skip


def dataset_dir(sizes: Sizes) -> Path:
    return DATA / ("smoke" if sizes.smoke else "full") / "nietzsche" / "0"


def prepare(sizes: Sizes, wheels: bool) -> dict[str, Any]:
    """Tokenize Nietzsche with GPT-2 (samples up to 1024 tokens; 64 for the smoke run) once."""
    target = dataset_dir(sizes)
    if not (target / "description.json").is_file():
        root = target.parents[1]
        shutil.rmtree(root, ignore_errors=True)
        command = [
            sys.executable, "-m", "lmfast.prepare", "--documents_train_file", str(NIETZSCHE / "train.txt"),
            "--documents_valid_file", str(NIETZSCHE / "valid.txt"), "--end_of_document", "[END_OF_DOCUMENT]",
            "--tokenizer_cls_name", "GPT2Tokenizer", "--max_sample_length", str(sizes.max_sample_length),
            "--min_sample_length", "8", "--datasets_root", str(root), "--dataset_name", "nietzsche",
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO, check=True, env=_env())
    if wheels:
        _download_wheels(REPO / ".whl")
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    return {"dataset": str(target), "data_mib": round(size / 2**20, 2)}


def _download_wheels(folder: Path) -> None:
    """The serving stack's wheels for the GPU image's Python 3.12 (it has none of them)."""
    from importlib.metadata import version

    folder.mkdir(exist_ok=True)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + [
        "--platform=manylinux2014_x86_64"
    ]
    for name in SERVE_WHEELS:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
             "3.12", "--implementation", "cp", *platforms, "-d", str(folder), f"{name}=={version(name)}"],
            check=True,
        )  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


# --- phases: each returns its figures, run in a process of its own --------------------------------


def phase_equality(sizes: Sizes) -> dict[str, Any]:
    """Greedy tokens of the CPU reference (fp32, concat cache) = the device path (fp32, in-place
    cache, logits picked on the device), and each prompt alone = in a batch of 8 on the device."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    from lmfast.generation.model_files import ModelInfo
    from lmfast.generation.params import GenerationParams
    from lmfast.generation.session import DecodeSession
    from lmfast.generation.text import TextCodec
    from lmfast.generation.torch_backend import TorchBackend

    codec = TextCodec.load(dataset_dir(sizes) / "tokenizer")
    lines = [line for line in (NIETZSCHE / "valid.txt").read_text().splitlines() if len(line) > 20]
    prompts = lines[: 4 if sizes.smoke else 8]
    params = GenerationParams(max_new_tokens=8 if sizes.smoke else 48, temperature=0.0, ignore_eos=True)

    def greedy(model: Any, backend: TorchBackend, batch: list[str]) -> list[list[int]]:
        session = DecodeSession(backend, codec, ModelInfo.from_config(model.config.to_dict()))
        ids = [session.add(p, params)[0] for p in batch]
        tokens: dict[int, list[int]] = {i: [] for i in ids}
        while len(session):
            for event in session.step():
                tokens[event.row_id].append(event.token_id)
        return [tokens[i] for i in ids]

    results: dict[str, Any] = {}
    torch.manual_seed(0)
    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=codec.vocab_size, n_layer=2, n_embd=128, n_head=4, initializer_range=0.3)),
        "smollm2_shaped": LlamaForCausalLM(smollm2_shaped(codec.vocab_size, smoke=True, num_hidden_layers=4)),
    }  # fmt: skip
    for name, model in models.items():
        model = model.float().eval()
        reference = greedy(model, TorchBackend(model, "cpu", cache="concat"), prompts)
        device = TorchBackend(model, sizes.device, cache="inplace", device_sampling=True)
        batched = greedy(model, device, prompts)
        alone = [greedy(model, device, [p])[0] for p in prompts]
        model.to("cpu")
        results[name] = {
            "cpu_equals_device": batched == reference,
            "rows_equal": sum(a == b for a, b in zip(batched, reference, strict=True)),
            "batch_invariant": alone == batched,
            "rows": len(prompts),
            "first_divergence": _first_divergence(reference, batched),
        }
    return results


def _first_divergence(a: list[list[int]], b: list[list[int]]) -> int | None:
    """The earliest token index where some row differs (greedy drift shows where it starts)."""
    found = [
        next((i for i, (x, y) in enumerate(zip(r, s, strict=False)) if x != y), None)
        for r, s in zip(a, b, strict=True)
    ]
    found = [i for i in found if i is not None]
    return min(found) if found else None


def _train_cli(sizes: Sizes, out: Path, name: str, *flags: str) -> dict[str, Any]:
    """`lmfast train` for a few steps; the figures of its last log line (tokens/s, MFU)."""
    steps = sizes.train_steps
    command = [
        sys.executable, "-m", "lmfast", "train", "--dataset_dir", str(dataset_dir(sizes)), "--model", sizes.train_model,
        "--accelerator", "gpu" if sizes.device == "cuda" else "cpu", "--devices", "1", "--batch_size",
        str(sizes.train_batch), "--max_steps", str(steps), "--log_every_n_steps", str(max(1, steps // 4)),
        "--val_check_interval", str(steps), "--limit_val_batches", "2", "--num_generated_samples", "1",
        "--generation_max_new_tokens", "8", "--num_workers", "2", "--experiments_root", str(out / "experiments"),
        "--experiment_name", name, *flags,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"lmfast train {' '.join(flags)} exited {result.returncode}: {result.stderr[-1500:]}"
        )
    experiment = Path(result.stdout.strip().splitlines()[-1])
    log = (experiment / "logs" / "train.log").read_text()
    lines = re.findall(r"step (\d+)/\d+ .*?tokens/s (\d+).*?(?:mfu ([\d.]+)%)?\s+eta", log)
    step, rate, mfu = lines[-1]
    description = json.loads((experiment / "description.json").read_text())
    return {
        "tokens_per_s": float(rate),
        "mfu": float(mfu) / 100 if mfu else None,
        "at_step": int(step),
        "precision": description.get("resolved_precision"),
        "wall_s": round(time.perf_counter() - started, 1),
        "skipped_overflow_lines": log.count("overflowed step"),
        "samples": (experiment / "generated.txt").is_file(),
    }


def _plain(sizes: Sizes, precision: str, compile: bool) -> dict[str, Any]:
    """benchmarks.bench_train's nanoGPT-style loop on the same data, device and precision."""
    from benchmarks.bench_train import WARMUP_STEPS, _Setup, _tokens_per_s, run_plain

    setup = _Setup(dataset_dir(sizes), sizes.train_model, batch_size=sizes.train_batch)
    _, times, tokens = run_plain(setup, max(sizes.plain_steps, WARMUP_STEPS + 2), precision, compile=compile)
    return {"tokens_per_s": round(_tokens_per_s(times, tokens), 1)}


def _mfu(sizes: Sizes, tokens_per_s: float, precision: str) -> float | None:
    import torch

    from lmfast.train.callbacks import device_peak_flops
    from lmfast.train.model import DatasetTokenizer, build_model, flops_per_token

    if sizes.device != "cuda":
        return None
    directory = dataset_dir(sizes)
    tokenizer = DatasetTokenizer.from_dataset(
        directory, json.loads((directory / "description.json").read_text())
    )
    model = build_model(sizes.train_model, tokenizer, sizes.max_sample_length, None)
    peak = device_peak_flops(torch.device("cuda"), precision)
    per_token = flops_per_token(
        model.config, sum(p.numel() for p in model.parameters()), sizes.max_sample_length
    )
    return None if peak is None else round(tokens_per_s * per_token / peak, 4)


def _train_phase(sizes: Sizes, out: Path, precision: str) -> dict[str, Any]:
    import torch

    figures: dict[str, Any] = {"device": torch.cuda.get_device_name() if sizes.device == "cuda" else "cpu"}
    figures["lmfast_eager"] = _train_cli(sizes, out, f"{precision}_eager", "--precision", precision)
    _keep(figures)
    figures["plain_eager"] = _plain(sizes, precision, compile=False)
    figures["plain_eager"]["mfu"] = _mfu(sizes, figures["plain_eager"]["tokens_per_s"], precision)
    figures["lmfast_vs_plain_eager"] = round(
        figures["lmfast_eager"]["tokens_per_s"] / figures["plain_eager"]["tokens_per_s"], 3
    )
    _keep(figures)
    if sizes.compile:
        figures["lmfast_compiled"] = _train_cli(
            sizes, out, f"{precision}_compiled", "--precision", precision, "--compile"
        )
        _keep(figures)
        figures["plain_compiled"] = _plain(sizes, precision, compile=True)
        figures["plain_compiled"]["mfu"] = _mfu(sizes, figures["plain_compiled"]["tokens_per_s"], precision)
    return figures


PARTIAL: Path | None = None
"""Where a phase keeps what it has measured so far (its result file): a phase stopped at its time
limit still reports the figures it had."""


def _keep(figures: dict[str, Any]) -> None:
    if PARTIAL is not None:
        PARTIAL.write_text(json.dumps({"status": "partial", **figures}, indent=2, default=str))


def phase_train_bf16(sizes: Sizes, out: Path) -> dict[str, Any]:
    return _train_phase(sizes, out, "bf16-mixed")


def phase_train_fp16(sizes: Sizes, out: Path) -> dict[str, Any]:
    # on a CPU Lightning turns 16-mixed into bf16: the smoke run proves the phase runs, not fp16
    return _train_phase(sizes, out, "16-mixed")


def phase_decode(sizes: Sizes) -> dict[str, Any]:
    """Greedy decode tokens/s of the torch backend (in-place cache, bf16 on CUDA) at each batch
    size vs HF `generate` on the same model, prompts and lengths, alternating, in this process."""
    import torch
    from transformers import LlamaForCausalLM

    from lmfast.generation.model_files import ModelInfo
    from lmfast.generation.params import GenerationParams
    from lmfast.generation.session import DecodeSession
    from lmfast.generation.text import TextCodec
    from lmfast.generation.torch_backend import TorchBackend, default_dtype

    codec = TextCodec.load(dataset_dir(sizes) / "tokenizer")
    torch.manual_seed(0)
    dtype = default_dtype(sizes.device)
    model = LlamaForCausalLM(smollm2_shaped(codec.vocab_size, sizes.smoke)).to(sizes.device, dtype).eval()
    backend = TorchBackend(model, sizes.device)
    info = ModelInfo.from_config(model.config.to_dict())
    new = sizes.decode_new_tokens
    params = GenerationParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    prompt = [
        int(t) for t in codec.encode("Supposing that Truth is a woman--what then? Is there not ground")
    ][:16]

    def ours(batch: int) -> float:
        session = DecodeSession(backend, codec, info, max_batch_size=batch)
        for _ in range(batch):
            session.add_token_ids(prompt, params)
        _sync(sizes)
        started = time.perf_counter()
        produced = 0
        while len(session):
            produced += len(session.step())
        _sync(sizes)
        return produced / (time.perf_counter() - started)

    def hf(batch: int) -> float:
        ids = torch.tensor([prompt] * batch, device=sizes.device)
        _sync(sizes)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                pad_token_id=0,
            )  # fmt: skip
        _sync(sizes)
        return (out.shape[1] - ids.shape[1]) * batch / (time.perf_counter() - started)

    figures: dict[str, Any] = {"dtype": str(dtype), "new_tokens": new, "prompt_tokens": len(prompt)}
    for batch in sizes.decode_batches:
        ours(batch), hf(batch)  # warm-up: allocations, kernels chosen
        rounds = [(ours(batch), hf(batch)) for _ in range(2)]
        lmfast, reference = max(r[0] for r in rounds), max(r[1] for r in rounds)
        figures[f"batch_{batch}"] = {
            "lmfast_tokens_per_s": round(lmfast, 1),
            "hf_generate_tokens_per_s": round(reference, 1),
            "ratio": round(lmfast / reference, 2),
        }
        _keep(figures)
    return figures


def _sync(sizes: Sizes) -> None:
    if sizes.device == "cuda":
        import torch

        torch.cuda.synchronize()


def _model_dir(sizes: Sizes, out: Path, name: str) -> Path:
    """A random-weight SmolLM2-shaped HF model dir over the dataset's GPT-2 tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    from lmfast.generation.text import TextCodec

    directory = out / name
    if (directory / "config.json").is_file():
        return directory
    tokenizer_dir = dataset_dir(sizes) / "tokenizer"
    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_shaped(TextCodec.load(tokenizer_dir).vocab_size, sizes.smoke))
    model.save_pretrained(directory)
    for path in tokenizer_dir.iterdir():
        if path.is_file():
            shutil.copy(path, directory / path.name)
    return directory


def phase_lora(sizes: Sizes, out: Path) -> dict[str, Any]:
    base = _model_dir(sizes, out, "smollm2_shaped")
    precision = "32-true" if sizes.smoke else "bf16-mixed"
    figures = _train_cli(sizes, out, "lora", "--model", str(base), "--lora_r", "16", "--precision", precision)
    return {"lmfast_lora": figures}


def phase_fsdp(sizes: Sizes, out: Path) -> dict[str, Any]:
    precision = "32-true" if sizes.smoke else "bf16-mixed"
    return {
        "lmfast_fsdp_1_device": _train_cli(sizes, out, "fsdp", "--strategy", "fsdp", "--precision", precision)
    }


def phase_serve(sizes: Sizes, out: Path) -> dict[str, Any]:
    """`lmfast serve` with the torch backend; completions from 1/16/64 concurrent clients."""
    model_dir = _model_dir(sizes, out, "smollm2_shaped")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "lmfast", "serve", str(model_dir), "--backend", "torch", "--provider",
        sizes.device, "--port", str(port), "--max_batch_size", str(max(sizes.clients)),
    ]  # fmt: skip
    log = (out / "serve.log").open("w")
    server = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, server)
        figures: dict[str, Any] = {}
        for clients in sizes.clients:
            _completions(port, 1, sizes.serve_tokens)  # warm
            figures[f"clients_{clients}"] = _completions(port, clients, sizes.serve_tokens)
            _keep(figures)
        return figures
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _wait_ready(port: int, server: subprocess.Popen, limit_s: float = 180) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"lmfast serve exited {server.returncode} (see serve.log)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health_check/", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("lmfast serve did not answer /health_check/ in time")


def _completions(port: int, clients: int, max_tokens: int) -> dict[str, Any]:
    """Each client sends one greedy completion at once; total tokens/s and latencies."""
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []

    def client(i: int) -> None:
        body = json.dumps(
            {
                "prompt": f"Supposing that Truth is a woman {i}",
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                answer = json.loads(response.read())
            latencies.append(time.perf_counter() - started)
            tokens.append(int(answer["usage"]["completion_tokens"]))
        except Exception as error:  # recorded: the other clients go on
            errors.append(repr(error)[:200])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "errors": errors[:3],
        "failed": len(errors),
    }


PHASES: list[tuple[str, Callable[..., dict[str, Any]], int, bool]] = [
    # (name, function, most seconds it may take, whether it takes the output folder)
    ("equality", phase_equality, 90, False),
    ("train_bf16", phase_train_bf16, 200, True),
    ("decode", phase_decode, 120, False),
    ("train_fp16", phase_train_fp16, 120, True),
    ("lora", phase_lora, 90, True),
    ("fsdp", phase_fsdp, 90, True),
    ("serve", phase_serve, 120, True),
]
"""In priority order: what the GPU story stands on first."""


def run_phase(name: str, sizes: Sizes, out: Path) -> dict[str, Any]:
    _, function, _, takes_out = next(p for p in PHASES if p[0] == name)
    return function(sizes, out) if takes_out else function(sizes)


def run_all(sizes: Sizes, out: Path, budget_s: float, only: list[str] | None) -> dict[str, Any]:
    """Every phase in order, each in a fresh process limited to what is left of the budget."""
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "mode": "cpu_smoke" if sizes.smoke else "gpu",
        "budget_s": budget_s,
        "phases": {},
    }
    report["environment"] = _environment()
    started = time.perf_counter()
    for name, _, cap, _ in PHASES:
        if only and name not in only:
            continue
        left = budget_s - (time.perf_counter() - started)
        limit = left if sizes.smoke else min(cap, left)  # a shared CPU's pace is no guide: the budget alone
        if left < 15:
            report["phases"][name] = {"status": "skipped", "reason": f"{left:.0f} s of the budget left"}
            continue
        result_path = out / f"{name}.json"
        result_path.unlink(missing_ok=True)  # never an earlier run's
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--phase",
            name,
            "--out",
            str(out),
            "--result",
            str(result_path),
        ]
        if sizes.smoke:
            command.append("--cpu_smoke")
        phase_started = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=limit
            )
            if result_path.is_file():
                entry = json.loads(result_path.read_text())
            else:
                entry = {"status": "failed", "error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
        except subprocess.TimeoutExpired:
            entry = json.loads(result_path.read_text()) if result_path.is_file() else {}  # what it kept
            entry.update(status="timeout", error=f"stopped after {limit:.0f} s")
        entry["seconds"] = round(time.perf_counter() - phase_started, 1)
        report["phases"][name] = entry
        print(f"[gpu_check] {name}: {entry.get('status')} in {entry['seconds']} s", flush=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))  # kept as it grows
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    return report


def _environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import lightning
        import transformers

        info.update(transformers=transformers.__version__, lightning=lightning.__version__)
    except ImportError as error:
        info["import_error"] = str(error)
    return info


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# lmfast device check ({report['mode']})",
        "",
        f"environment: {json.dumps(report['environment'])}",
        "",
    ]
    for name, entry in report["phases"].items():
        lines += [f"## {name}: {entry.get('status')} ({entry.get('seconds', 0)} s)", "", "```json"]
        lines += [json.dumps(entry, indent=2), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="build the carried data (on a CPU machine)")
    parser.add_argument(
        "--wheels", action="store_true", help="with --prepare: download the serving wheels into .whl/"
    )
    parser.add_argument("--cpu_smoke", action="store_true", help="every phase at toy sizes on the CPU")
    parser.add_argument(
        "--budget_s", type=float, default=DEFAULT_BUDGET_S, help="seconds for all phases together"
    )
    parser.add_argument("--phases", nargs="+", choices=[p[0] for p in PHASES], help="only these phases")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks" / "results" / "gpu_check"))
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # one phase, in the child process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = Sizes(args.cpu_smoke)
    if args.prepare:
        print(json.dumps(prepare(sizes, args.wheels)))
        return 0
    if args.phase:
        global PARTIAL
        PARTIAL = args.result
        try:
            entry = {"status": "ok", **run_phase(args.phase, sizes, args.out)}
        except Exception as error:  # recorded in the report; the next phase still runs
            entry = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}"[:2000],
                "trace": traceback.format_exc()[-3000:],
            }
        args.result.write_text(json.dumps(entry, indent=2, default=str))
        return 0
    if not (dataset_dir(sizes) / "description.json").is_file():
        print(
            f"gpu_check: no prepared data in {dataset_dir(sizes)}; run with --prepare first", file=sys.stderr
        )
        return 2
    report = run_all(sizes, args.out, args.budget_s, args.phases)
    failed = [n for n, e in report["phases"].items() if e.get("status") != "ok"]
    print(f"[gpu_check] report in {args.out}; not ok: {failed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
