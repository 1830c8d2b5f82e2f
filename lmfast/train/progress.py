"""Where a run is and how it ends: step N / total with an ETA, and a validation at the very last step.

Lightning validates on its interval only, so a `--max_steps` run used to end between two
validations and keep (and export) an older step as its best model. `ValidateAtEnd` stops the run
through `trainer.should_stop` on its last step, which makes Lightning validate (and so checkpoint)
exactly there.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


def total_steps(trainer: pl.Trainer) -> int:
    """Optimizer steps the whole run makes (`--max_steps`, or what the epochs amount to)."""
    if trainer.max_steps > 0:
        return int(trainer.max_steps)
    return int(trainer.estimated_stepping_batches)


def data_epoch(trainer: pl.Trainer) -> int:
    """The epoch of the batch trained last, counted in batches as the data sampler counts them.

    Lightning's `current_epoch` moves on when a run stops at `--max_steps` mid-epoch, so a resumed
    run said epoch 1 where the uninterrupted run says 0 at the same step; the data position
    (`batch_progress.total.processed`, kept in checkpoints) does not.
    """
    per_epoch = trainer.num_training_batches
    if not isinstance(per_epoch, int) or per_epoch <= 0:  # not set up yet, or an unsized loader
        return int(trainer.current_epoch)
    consumed = trainer.fit_loop.epoch_loop.batch_progress.total.processed
    return max(int(consumed) - 1, 0) // per_epoch


class StepClock:
    """ETA from the steps made since this process started training (a resumed run starts mid-way)."""

    def __init__(self) -> None:
        self._start: tuple[float, int] | None = None

    def start(self, step: int) -> None:
        self._start = (time.monotonic(), step)

    def eta_seconds(self, step: int, total: int) -> float | None:
        if self._start is None or step <= self._start[1]:
            return None
        began, first = self._start
        return (time.monotonic() - began) / (step - first) * max(total - step, 0)


def format_eta(seconds: float | None) -> str:
    """`0:01:23`, or `?` before the first step gives a rate."""
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


class ValidateAtEnd(pl.Callback):
    """Requests the stop on the run's last step (`--max_steps` or the last batch of the last epoch).

    Lightning runs a validation when `should_stop` is set, so the best checkpoint, `hf/` and what is
    exported are chosen with the loss of the final step too, not only of the last interval.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        max_epochs = trainer.max_epochs
        last_epoch = (
            max_epochs is not None
            and max_epochs > 0
            and trainer.current_epoch + 1 >= max_epochs
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )
        if last_step or last_epoch:
            trainer.should_stop = True


class StepProgressBar(TQDMProgressBar):
    """The terminal bar counts optimizer steps of the whole run (N / total, with tqdm's ETA), not
    batches of the current epoch, and survives epoch boundaries."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        # first epoch of this process: the bar starts at the resumed step
        if bar.total != total_steps(trainer):
            bar.reset(total=total_steps(trainer))
            bar.initial = trainer.global_step
            bar.n = trainer.global_step
        bar.set_description(f"epoch {trainer.current_epoch}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if bar is None or trainer.global_step == bar.n:
            return
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
