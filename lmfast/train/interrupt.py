"""A run stopped by Ctrl-C, `kill` or a SLURM pre-emption leaves a resumable `last.ckpt`; so does time.

Lightning answers Ctrl-C with a "graceful shutdown" that writes no checkpoint, and its SLURM
requeue handler writes `hpc_ckpt_*.ckpt` outside the experiment. Here SIGINT, SIGTERM and SIGUSR1
(SLURM's `--signal=USR1@90` warning) only set a flag; at the end of the optimizer step in
progress the run writes `checkpoints/last.ckpt` and stops with `TrainingInterrupted`. That is the
point where the step cadence of ModelCheckpoint saves too, so `lmfast train --resume` continues bit
for bit. A second Ctrl-C stops at once, without a checkpoint. The same callback writes `last.ckpt`
every `--checkpoint_every_minutes` of wall-clock time, so a `kill -9` or a power cut loses at most
that much.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("lmfast.train")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class TrainingInterrupted(Exception):
    """A stop signal ended the run after `last.ckpt` was written at `step`."""

    def __init__(self, signum: int, step: int, checkpoint: Path, is_global_zero: bool = True) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.is_global_zero = is_global_zero  # the one process that reports it (every rank stops)
        experiment_dir = checkpoint.parent.parent
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; {checkpoint} holds it, "
            f"continue with: lmfast train --resume {experiment_dir}"
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


def ignore_stop_signals(*_: Any) -> None:
    """DataLoader `worker_init_fn` part: the workers leave stop signals to the training process.

    Ctrl-C reaches the whole process group; a worker that died of it would fail the very step the
    training process is finishing to write its checkpoint. The workers end with the main process.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class SafeStop(pl.Callback):
    """Writes `last.ckpt` at a step boundary on a stop signal (then stops) or every `every_minutes`."""

    def __init__(self, experiment_dir: Callable[[], Path | None], every_minutes: float) -> None:
        self._experiment_dir = experiment_dir  # known only once the run is claimed (rank 0) or told
        self._every_s = every_minutes * 60.0 if every_minutes > 0 else None
        self._signum: int | None = None
        self._stopped: TrainingInterrupted | None = None
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning's own handlers are registered; Lightning restores the previous ones at teardown
        self._last_save = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._request_stop)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self._signum = signum
        log.warning(
            "%s: writing a checkpoint at the end of this step, then stopping (Ctrl-C again stops at once)",
            signal.Signals(signum).name,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fit_loop._should_accumulate():
            return  # mid-accumulation the summed gradients are in no checkpoint
        due = self._every_s is not None and time.monotonic() - self._last_save >= self._every_s
        stop, due = _any_rank(trainer, self._signum is not None, due)
        if not (stop or due):
            return
        path = Path(self._experiment_dir()) / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self._last_save = time.monotonic()
        if stop and not trainer.should_stop:  # (a run at its last step just ends)
            # raised at the next hook, once Lightning has logged this step's metrics
            signum = self._signum or signal.SIGTERM
            self._stopped = TrainingInterrupted(signum, trainer.global_step, path, trainer.is_global_zero)

    def _raise_if_stopped(self, *_: Any) -> None:
        if self._stopped is not None:
            raise self._stopped

    on_train_batch_start = on_validation_start = on_train_epoch_end = _raise_if_stopped  # type: ignore[assignment]


def _any_rank(trainer: pl.Trainer, *local: bool) -> list[bool]:
    """Each flag set where any rank set it (one all-reduce), so every rank saves and stops together;
    one process decides alone, with no tensor (and no GPU sync) per step."""
    if trainer.world_size == 1:
        return list(local)
    import torch

    flags = torch.tensor(local, dtype=torch.int32, device=trainer.strategy.root_device)
    return [bool(v) for v in trainer.strategy.reduce(flags, reduce_op="sum").tolist()]
