"""Gradient clipping by the global norm, the same way whatever the strategy and precision.

Two things go wrong without this: under a loss scaler the norm must be taken on unscaled
gradients (fused AdamW unscales inside its own step, so nobody else has), and under FSDP each rank
holds a shard of every gradient, so `torch.nn.utils.clip_grad_norm_` would clip each shard by its
own local norm. The FSDP root's `clip_grad_norm_` reduces the norm over every rank first.
"""

from __future__ import annotations

from typing import Any

import torch


def unscale_once(scaler: Any, optimizer: torch.optim.Optimizer) -> None:
    """`scaler.unscale_(optimizer)` unless it already ran since the last `update()` (Lightning
    unscales itself for optimizers that do not unscale in their step; a second call raises)."""
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:
        scaler.unscale_(optimizer)


def fsdp_root(module: Any) -> Any:
    """The FSDP root module wrapping `module` (Lightning's `trainer.model`), or None when not FSDP."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return module if isinstance(module, FullyShardedDataParallel) else None


def clip_gradients(
    optimizer: torch.optim.Optimizer, max_norm: float, scaler: Any = None, root: Any = None
) -> torch.Tensor:
    """Clip the gradients of `optimizer`'s parameters to a global norm of `max_norm`.

    Args:
        scaler: the loss scaler (16-mixed), whose gradients are unscaled first, or None.
        root: the FSDP root module when the parameters are sharded, else None.

    Returns:
        The total norm before clipping (over every rank's shard under FSDP); inf or NaN on an
        overflowed step, which the scaler then skips.
    """
    if scaler is not None:
        unscale_once(scaler, optimizer)
    if root is not None:
        return root.clip_grad_norm_(max_norm)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
