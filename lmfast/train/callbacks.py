"""Monitoring callbacks: throughput and MFU, validation lines in the text log, generated text samples.

TensorBoard gets the scalars, `logs/train.log` a plain-text line per log step and validation, and
`generated.txt` one JSON line per text sample generated at each validation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from lmfast.models.dataset import PreparedSplit
from lmfast.train.clipping import fsdp_root
from lmfast.train.model import flops_per_token
from lmfast.train.progress import StepClock, data_epoch, format_eta, total_steps

log = logging.getLogger("lmfast.train")

# Dense peak TFLOP/s per GPU (no sparsity): (bf16/fp16 tensor cores, tf32 tensor cores). First match wins,
# so the more specific names come first. Sources: NVIDIA data sheets.
GPU_PEAK_TFLOPS: list[tuple[str, tuple[float, float]]] = [
    ("H100 PCIe", (756.0, 378.0)),
    ("H100 NVL", (835.0, 417.0)),
    ("H100", (989.4, 494.7)),  # SXM
    ("H200", (989.4, 494.7)),
    ("GH200", (989.4, 494.7)),
    ("B200", (2250.0, 1100.0)),
    ("A100", (312.0, 156.0)),
    ("A10G", (70.0, 35.0)),
    ("A10", (125.0, 62.5)),
    ("L40S", (362.0, 183.0)),
    ("L4", (121.0, 60.0)),
    ("RTX 4090", (165.2, 82.6)),
    ("RTX 3090", (71.0, 35.6)),
    ("V100", (125.0, 15.7)),  # no bf16 / tf32: fp16 tensor cores, fp32 CUDA cores
    ("T4", (65.0, 8.1)),
]


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at this precision, or None where unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32) in GPU_PEAK_TFLOPS:
        if key in name:
            return (half if ("16" in precision) else tf32) * 1e12
    return None


class ThroughputMonitor(pl.Callback):
    """Logs learning rate, tokens/s (real tokens, padding excluded) and MFU every `log_every_n_steps`.

    MFU = useful model FLOPs (6N + 12LHQT per real token, `flops_per_token`) / elapsed / peak;
    padding is not counted as useful work, so the figure is conservative. N is the whole model's
    count as the module took it before any strategy sharded it (not a rank's FSDP shard), and
    under LoRA only the trainable parameters get weight gradients.

    Also `train/trained_tokens`: the tokens the loss has covered so far, over all ranks and resumes
    (padding never; in a dialog dataset only the tokens its loss mask keeps, the assistant turns).
    """

    def __init__(self, precision: str, peak_tflops: float | None = None) -> None:
        self.precision = precision
        self.peak_tflops = peak_tflops
        self._tokens = 0
        self._flops = 0.0
        self._start = 0.0
        self._num_params = 0
        self._trainable_params: int | None = None
        self._peak: float | None = None
        self._lr: float | None = None  # the rate the logged step used (read before the scheduler moves it)
        self._trained = 0  # this rank's trained tokens since the last log step
        self.trained_tokens = 0  # all ranks', since the run began (saved in checkpoints)
        self._clock = StepClock()

    def state_dict(self) -> dict[str, Any]:
        return {"trained_tokens": self.trained_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.trained_tokens = int(state_dict.get("trained_tokens", 0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # LMModule counts before FSDP shards the model: pl_module.model.parameters() would then be a shard
        self._num_params = getattr(pl_module, "num_parameters", None) or sum(
            p.numel() for p in pl_module.model.parameters()
        )
        self._trainable_params = getattr(pl_module, "num_trainable_parameters", None)
        self._peak = (
            self.peak_tflops * 1e12
            if self.peak_tflops
            else device_peak_flops(pl_module.device, self.precision)
        )
        self._reset()
        self._clock.start(trainer.global_step)

    def _reset(self) -> None:
        self._tokens, self._flops = 0, 0.0
        self._start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        tokens = int(batch.get("num_tokens", 0))
        self._tokens += tokens
        self._trained += int(batch.get("num_trained_tokens", 0))
        config = pl_module.model.config
        self._flops += tokens * flops_per_token(
            config, self._num_params, batch["input_ids"].shape[1], self._trainable_params
        )
        step = trainer.global_step
        if trainer.fit_loop._should_accumulate() or step % trainer.log_every_n_steps != 0:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # once per log interval: honest wall time
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        lr = self._lr
        trained = trainer.strategy.reduce(
            torch.tensor(float(self._trained), device=pl_module.device), reduce_op="sum"
        )
        self.trained_tokens += int(trained.item())
        self._trained = 0
        metrics = {
            "train/lr": lr,
            "train/tokens_per_s": self._tokens * trainer.world_size / elapsed,
            "train/trained_tokens": self.trained_tokens,
        }
        if self._peak:
            metrics["train/mfu"] = self._flops / elapsed / self._peak
        if trainer.logger is not None:
            # direct, exactly every log_every_n_steps; step index as Lightning's own scalars (0-based)
            trainer.logger.log_metrics(metrics, step=step - 1)
        loss = trainer.callback_metrics.get("train/loss")
        mfu = f" mfu {metrics['train/mfu']:.1%}" if "train/mfu" in metrics else ""
        if trainer.is_global_zero:
            total = total_steps(trainer)
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.3g tokens/s %.0f trained tokens %d%s eta %s",
                step,
                total,
                data_epoch(trainer),
                float(loss) if loss is not None else float("nan"),
                lr,
                metrics["train/tokens_per_s"],
                self.trained_tokens,
                mfu,
                format_eta(self._clock.eta_seconds(step, total)),
            )
        self._reset()


class ValidationLog(pl.Callback):
    """One plain-text log line per validation."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")}
        text = " ".join(f"{k.removeprefix('valid/')} {v:.4f}" for k, v in sorted(metrics.items()))
        stage = "sanity check" if trainer.sanity_checking else "validation"
        log.info("%s at step %d epoch %d: %s", stage, trainer.global_step, data_epoch(trainer), text)


def sample_prompts(split: PreparedSplit, count: int, text_prefix: int = 8) -> list[list[int]]:
    """The prompts TextSamples continues: the first `text_prefix` tokens of validation samples, or in a
    dialog dataset each sample up to its first trained token, i.e. the chat template's rendering of the
    turns before the first answer with its generation prompt (samples that start with an answer are skipped)."""
    prompts: list[list[int]] = []
    for i in range(len(split)):
        if len(prompts) >= count:
            break
        ids, mask = split[i], split.sample_loss_mask(i)
        if mask is None:
            prompts.append(ids[:text_prefix].tolist())
            continue
        trained = np.flatnonzero(mask)
        if len(trained) and trained[0] > 0:
            prompts.append(ids[: trained[0]].tolist())
    return prompts


class TextSamples(pl.Callback):
    """Generates text from the first tokens of a few validation samples at every validation.

    For a dialog dataset (`chat=True`) the prompts are chat-template renderings (see `sample_prompts`),
    written with their special tokens so the template shows, and the model answers until its end of turn.

    Sampling uses lmfast's decode loop with `GenerationParams`' defaults and a seed derived from the
    step, so it neither disturbs nor depends on the training RNG: exact resume stays exact.

    Under FSDP every rank gathers the full parameters (a collective) and rank 0 generates with
    them; under DeepSpeed or model parallelism, whose parameters no single rank can run, there are
    no samples (said once in the log).
    """

    def __init__(
        self,
        output: Path,
        tokenizer_dir: Path,
        prompts: list[list[int]],
        *,
        seed: int,
        max_new_tokens: int = 48,
        real_vocab_size: int | None = None,
        chat: bool = False,
    ) -> None:
        self.chat = chat
        self.output = Path(output)
        self.tokenizer_dir = Path(tokenizer_dir)
        self.prompts = prompts
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.real_vocab_size = real_vocab_size
        self._said_skipped = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.prompts:
            return
        if type(trainer.strategy).__name__ in ("DeepSpeedStrategy", "ModelParallelStrategy"):
            if trainer.is_global_zero and not self._said_skipped:
                log.info(
                    "no text samples under %s: no rank holds the whole model", type(trainer.strategy).__name__
                )
            self._said_skipped = True
            return
        with _whole_model(trainer):  # every rank enters: under FSDP it gathers the shards
            if trainer.is_global_zero:
                self._generate(trainer, pl_module)

    def _generate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lmfast.generation.model_files import ModelInfo
        from lmfast.generation.params import GenerationParams
        from lmfast.generation.session import DecodeSession
        from lmfast.generation.text import TextCodec
        from lmfast.generation.torch_backend import TorchBackend

        model = pl_module.model
        was_training = model.training
        codec = TextCodec.load(self.tokenizer_dir)  # ids past its vocabulary (padding rows) are never drawn
        # lmfast's own decode loop and sampling defaults, as `lmfast generate` and the server use them;
        # its seeded NumPy RNGs leave torch's training RNG untouched, so exact resume stays exact
        params = GenerationParams(max_new_tokens=self.max_new_tokens, seed=self.seed + trainer.global_step)
        session = DecodeSession(
            TorchBackend(model, str(pl_module.device)), codec, ModelInfo.from_config(model.config.to_dict())
        )
        row_prompt = {session.add_token_ids(prompt, params)[0]: prompt for prompt in self.prompts}
        generated = dict.fromkeys(row_prompt, "")
        while len(session):
            for event in session.step():
                generated[event.row_id] += event.text
        model.train(was_training)
        valid_loss = trainer.callback_metrics.get("valid/loss")
        records = [
            {
                "step": trainer.global_step,
                "epoch": data_epoch(trainer),
                "valid_loss": None if valid_loss is None else round(float(valid_loss), 6),
                # a dialog prompt keeps its special tokens, so the chat template shows
                "prompt": codec.tokenizer.decode(prompt, skip_special_tokens=not self.chat),
                "generated": generated[row_id],
            }
            for row_id, prompt in row_prompt.items()
        ]
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with self.output.open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_text"):
            text = "\n\n".join(f"**{r['prompt']}**{r['generated']}" for r in records)
            experiment.add_text("generated", text, global_step=trainer.global_step)


def _whole_model(trainer: pl.Trainer) -> contextlib.AbstractContextManager[Any]:
    """Under FSDP, the full parameters in place of each rank's shard (read only); else nothing."""
    root = fsdp_root(trainer.strategy.model)
    if root is None:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(root, writeback=False)
