"""`LMModule`: the LightningModule around a `transformers` causal LM.

Checkpoint contract (docs/architecture.md §2): `state_dict` keys are `model.<HF parameter name>` and
`hyper_parameters["model_config"]` is the HF `config.to_dict()`, so the export stage rebuilds the
model from a `.ckpt` without lmfast's training code.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from lmfast.train.clipping import clip_gradients, fsdp_root
from lmfast.train.datamodule import IGNORE_INDEX
from lmfast.train.losses import lm_loss_sum, shift_for_next_token, unlikelihood_candidates_loss
from lmfast.train.nonfinite import NonFiniteLossError, NonFiniteWatch
from lmfast.train.optim import make_adamw, warmup_cosine_lambda

__all__ = ["LMModule", "NonFiniteLossError"]
log = logging.getLogger("lmfast.train")


class LMModule(pl.LightningModule):
    """Next-token training of `model` (+ optional unlikelihood loss) with AdamW and warmup + cosine."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        num_warmup_steps: int = 0,
        num_cycles: int = 0,
        unlikelihood_alpha: float = 0.0,
        train_config: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.num_warmup_steps = num_warmup_steps
        self.num_cycles = num_cycles
        self.unlikelihood_alpha = unlikelihood_alpha
        hyper_parameters = {"model_config": model.config.to_dict(), "train_config": dict(train_config or {})}
        if lora:
            hyper_parameters["lora"] = lora  # PEFT settings + base model dir (see lmfast.train.lora)
            self.strict_loading = False  # checkpoints hold the adapters only; the base comes from its dir
        self.save_hyperparameters(hyper_parameters)
        self.lora = bool(lora)
        # counted before any strategy shards or wraps the model (MFU: what trains, over all ranks)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.num_trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self._watch: NonFiniteWatch | None = None
        self._unchecked_steps = 0
        self._rng_to_restore: dict[str, Any] | None = None
        self._valid_sums: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # counted on the host before the copy: throughput logging never waits on the device
        batch["num_tokens"] = int(batch["attention_mask"].sum())
        # the targets the loss covers (a row's first token is never predicted): fewer under a dialog's loss mask
        batch["num_trained_tokens"] = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"])
        logits, targets = shift_for_next_token(logits, batch["labels"])
        lm_sum, count = lm_loss_sum(logits, targets)
        lm = lm_sum / count.clamp(min=1)
        out = {"lm_sum": lm_sum, "count": count, "lm": lm, "total": lm}
        if self.unlikelihood_alpha > 0:
            ul = unlikelihood_candidates_loss(logits, targets, batch["input_ids"])
            out["ul"] = ul
            out["total"] = lm + self.unlikelihood_alpha * ul
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        loss = losses["total"]
        self._observe_loss(loss)
        log = {
            "train/loss": loss,
            "train/lm_loss": losses["lm"],
            "train/ppl": torch.exp(losses["lm"].detach()),
        }
        if "ul" in losses:
            log["train/ul_loss"] = losses["ul"]
        self.log_dict(log, on_step=True, on_epoch=False, prog_bar=False)
        self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def _observe_loss(self, loss: torch.Tensor) -> None:
        """Count a non-finite loss on the device; read the counts every `log_every_n_steps` batches
        (and before any checkpoint), not at every step: a host sync per step idles a GPU."""
        if self._watch is None:
            # a loss scaler (16-mixed) skips an overflowed step itself: the run goes on
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            self._watch = NonFiniteWatch(tolerate=scaler is not None)
        self._watch.observe(loss)
        self._unchecked_steps += 1
        if self._unchecked_steps >= max(1, self.trainer.log_every_n_steps):
            self.check_finite()

    def check_finite(self) -> None:
        """Stop the run if the losses since the last check say so, decided by all ranks together
        (no rank is left waiting in a collective when another one stops).

        Raises:
            NonFiniteLossError: a NaN/inf loss (without a loss scaler), or too many overflowed
                steps in a row (with one).
        """
        self._unchecked_steps = 0
        if self._watch is None:
            return
        since, consecutive = self._watch.pending()
        stop = self._watch.verdict(since, consecutive)
        if self._watch.tolerate and since:
            scale = self.trainer.precision_plugin.scaler.get_scale()
            log.info(
                "skipped %d overflowed step(s) by step %d; loss scale %g", since, self.global_step, scale
            )
        if self.trainer.strategy.reduce_boolean_decision(stop, all=False):
            what = (
                f"{consecutive} overflowed steps in a row (fp16 loss scale {self.trainer.precision_plugin.scaler.get_scale():g})"
                if self._watch.tolerate
                else f"non-finite training loss ({since} step(s) on rank {self.global_rank})"
            )
            raise NonFiniteLossError(
                f"{what} by step {self.global_step}; stopped, the last good checkpoint is kept (lower "
                "--learning_rate, raise --num_warmup_steps or use bf16 instead of fp16)"
            )

    def on_validation_epoch_start(self) -> None:
        self._valid_sums = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = self._losses(batch)
        ul = losses.get("ul", torch.zeros((), device=self.device)) * losses["count"]
        self._valid_sums.append(torch.stack([losses["lm_sum"], losses["count"].float(), ul.float()]))

    def on_validation_epoch_end(self) -> None:
        local = (
            torch.stack(self._valid_sums).sum(0) if self._valid_sums else torch.zeros(3, device=self.device)
        )
        total = self.trainer.strategy.reduce(local.clone(), reduce_op="sum")  # every rank's tokens count once
        lm_sum, count, ul_sum = total[0], total[1].clamp(min=1), total[2]
        lm = lm_sum / count
        metrics = {"valid/loss": lm, "valid/ppl": torch.exp(lm)}
        if self.unlikelihood_alpha > 0:
            metrics["valid/ul_loss"] = ul_sum / count
            metrics["valid/total_loss"] = lm + self.unlikelihood_alpha * ul_sum / count
        # already reduced: logging without sync_dist keeps the value identical on every rank
        self.log_dict(metrics, prog_bar=False, sync_dist=False, rank_zero_only=False)
        self.log("val_loss", lm, prog_bar=True, logger=False)
        self._valid_sums = []

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by global norm, also with the fused AdamW under mixed precision.

        Lightning's AMP plugin refuses to clip when the optimizer unscales gradients inside its own
        step (fused AdamW), and its FSDP plugin refuses to clip at all. Here the gradients are unscaled
        first where a loss scaler exists (16-mixed; torch's GradScaler then skips its own unscale), and
        under FSDP the root module takes the norm over every rank's shard (`lmfast.train.clipping`).
        DeepSpeed and model-parallel strategies keep Lightning's own clipping.
        """
        if not gradient_clip_val:
            return
        other = type(self.trainer.strategy).__name__ in ("DeepSpeedStrategy", "ModelParallelStrategy")
        if other or gradient_clip_algorithm not in (None, "norm"):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        clip_gradients(optimizer, gradient_clip_val, scaler, fsdp_root(self.trainer.strategy.model))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = make_adamw(self.model, self.learning_rate, self.weight_decay, self.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine_lambda(self.num_warmup_steps, total, self.num_cycles)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # exact resume: RNG states travel with the checkpoint (Lightning saves loops, optimizer and scheduler)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._unchecked_steps:  # never a checkpoint of weights a NaN step has reached
            self.check_finite()
        if self.lora:  # only what trains: the frozen base is the pretrained dir, unchanged
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # tensors and plain Python values only, so the checkpoint loads with torch.load(weights_only=True)
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [
                str(kind),
                torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                int(pos),
                int(has_gauss),
                float(gauss),
            ],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lora:  # loading is not strict (no base weights in it): the adapters must all be there
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            if set(checkpoint["state_dict"]) != trainable:
                raise ValueError("the checkpoint's LoRA adapters do not match --lora_r/--lora_target_modules")
        # applied at train start, after the sanity check and data loader set-up have run
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        states, self._rng_to_restore = self._rng_to_restore, None
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(states["python"])
