"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine-with-restarts schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay for matrices and embeddings (dim >= 2), none for norms and biases (dim < 2).

    Shared (tied) parameters appear once, as `named_parameters()` yields them once.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _fused_supported(device: torch.device) -> bool:
    try:  # private helper; its absence just means "use the foreach kernel"
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover - depends on the torch version
        return device.type == "cuda"


def make_adamw(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch supports it on the model's device."""
    device = next(model.parameters()).device
    groups = param_groups(model, weight_decay)
    if _fused_supported(device):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, ValueError) as error:  # e.g. a dtype the fused kernel lacks
            log.info("fused AdamW unavailable (%s); using the foreach implementation", error)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def warmup_cosine_lambda(
    num_warmup_steps: int, num_training_steps: int, num_cycles: int
) -> Callable[[int], float]:
    """Learning-rate multiplier per optimizer step: linear warmup, then cosine with hard restarts.

    `num_cycles` = 0 keeps the rate constant after warmup (the default); n >= 1 runs n cosine
    decays to 0, each restarting at the peak (as `transformers`' cosine_with_hard_restarts schedule).
    """

    def multiplier(step: int) -> float:
        if step < num_warmup_steps:
            return (step + 1) / (num_warmup_steps + 1)
        if num_cycles == 0:
            return 1.0
        progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))

    return multiplier
