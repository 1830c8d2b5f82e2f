"""Watching the training loss for NaN/inf without a host sync on every step.

`observe` only adds to counters on the device; `check` (at log steps and before any checkpoint
is written) reads them once. Without a loss scaler a non-finite loss stops the run there; with one
(16-mixed) the scaler has already skipped the overflowed step and lowered its scale, so the run
goes on, and stops only when `max_consecutive` steps in a row overflowed (a scale that cannot
recover).
"""

from __future__ import annotations

import torch

MAX_CONSECUTIVE_OVERFLOWS = 50
"""Overflowed steps in a row a loss scaler may skip before the run stops (GradScaler halves its
scale each time: 50 halvings take 2**16 below 1e-10, past any useful scale)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stops, the last good checkpoint is kept."""


class NonFiniteWatch:
    """Device-side counts of non-finite losses, read at `check` only."""

    def __init__(self, tolerate: bool = False, max_consecutive: int = MAX_CONSECUTIVE_OVERFLOWS) -> None:
        self.tolerate = tolerate
        self.max_consecutive = max_consecutive
        self.skipped = 0  # non-finite steps seen so far, as of the last check
        self._since: torch.Tensor | None = None  # non-finite steps since the last check
        self._consecutive: torch.Tensor | None = None  # non-finite steps in a row, up to now

    def observe(self, loss: torch.Tensor) -> None:
        """Count `loss` (a scalar tensor) if it is not finite; no host sync."""
        bad = (~torch.isfinite(loss.detach())).to(torch.int64)
        if self._since is None:
            self._since = bad.clone()
            self._consecutive = bad.clone() if self._consecutive is None else (self._consecutive + 1) * bad
            return
        self._since += bad
        self._consecutive = (self._consecutive + 1) * bad

    def pending(self) -> tuple[int, int]:
        """(non-finite steps since the last check, non-finite steps in a row up to now); syncs."""
        if self._since is None:
            return 0, 0
        since, consecutive = int(self._since), int(self._consecutive)
        self._since = None  # the run of consecutive ones goes on across checks
        return since, consecutive

    def verdict(self, since: int, consecutive: int) -> bool:
        """True when the run must stop, given what `pending` returned (all ranks' counts)."""
        self.skipped += since
        if self.tolerate:
            return consecutive >= self.max_consecutive
        return since > 0
