"""The Lightning strategy for `--strategy`: the name as given, except FSDP on CPUs.

torch's FSDP runs on CPU processes over gloo when it is given the CPU as its device, which is how
the tests run it for real. Lightning stands in the way twice: it refuses `strategy="fsdp"` unless
the accelerator is a GPU (a check on the strategy's exact type, which a subclass passes), and it
wraps the model with `device_id=None` on a CPU, which FSDP then rejects. The subclass here wraps
the model with `device_id=cpu` and leaves everything else to Lightning's FSDPStrategy.
"""

from __future__ import annotations

from typing import Any


def make_strategy(strategy: str, accelerator: str) -> Any:
    """`strategy` unchanged, or an FSDP strategy instance for `fsdp` when the run is on CPUs."""
    if strategy != "fsdp":
        return strategy
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not on_cpu:
        return strategy
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    class CPUFSDPStrategy(FSDPStrategy):
        """Lightning's FSDPStrategy, wrapping the model for the CPU (gloo) explicitly."""

        def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
            if not any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
                model = FullyShardedDataParallel(
                    module=model,
                    cpu_offload=self.cpu_offload,
                    mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy,
                    device_id=torch.device("cpu"),
                    **self.kwargs,
                )
            return super()._setup_model(model)  # sees the wrapped model; the rest is Lightning's

    return CPUFSDPStrategy(process_group_backend="gloo")
