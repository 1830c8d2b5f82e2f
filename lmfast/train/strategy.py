"""The Lightning strategy for `--strategy`: the name as given, except FSDP on CPUs.

torch's FSDP runs on CPU processes over gloo when it is given the CPU as its device, which is how
the tests run it for real. Lightning stands in the way three times: it refuses `strategy="fsdp"`
unless the accelerator is a GPU (a check on the strategy's exact type, which a subclass passes);
it wraps the model with `device_id=None` on a CPU, which FSDP rejects; and its full state dict
asks FSDP to offload the gathered parameters to the CPU, which for parameters already there frees
the memory the state dict then reads (a segfault in `clone`). The subclass here wraps the model
for the CPU and gathers full state dicts without offloading; the rest is Lightning's FSDPStrategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def make_strategy(strategy: str, accelerator: str) -> Any:
    """`strategy` unchanged, or an FSDP strategy instance for `fsdp` when the run is on CPUs."""
    if strategy != "fsdp":
        return strategy
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not on_cpu:
        return strategy
    import lightning.pytorch.strategies.fsdp as lightning_fsdp
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    def full_state_dict_context(module: torch.nn.Module, world_size: int, rank0_only: bool = True) -> Any:
        return FSDP.state_dict_type(
            module=module,
            state_dict_type=StateDictType.FULL_STATE_DICT,
            state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
            optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        )

    @contextlib.contextmanager
    def no_offload() -> Iterator[None]:
        original = lightning_fsdp._get_full_state_dict_context
        lightning_fsdp._get_full_state_dict_context = full_state_dict_context
        try:
            yield
        finally:
            lightning_fsdp._get_full_state_dict_context = original

    class CPUFSDPStrategy(lightning_fsdp.FSDPStrategy):
        """Lightning's FSDPStrategy, with the model wrapped for the CPU and full state dicts gathered in place."""

        def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
            if not any(isinstance(module, FSDP) for module in model.modules()):
                model = FSDP(
                    module=model,
                    cpu_offload=self.cpu_offload,
                    mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy,
                    device_id=torch.device("cpu"),
                    **self.kwargs,
                )
            return super()._setup_model(model)  # sees the wrapped model; the rest is Lightning's

        def lightning_module_state_dict(self) -> dict[str, Any]:
            with no_offload():
                return super().lightning_module_state_dict()

        def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
            with no_offload():
                return super().optimizer_state(optimizer)

        def load_checkpoint(self, checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            with no_offload():
                return super().load_checkpoint(checkpoint_path, *args, **kwargs)

    return CPUFSDPStrategy(process_group_backend="gloo")
