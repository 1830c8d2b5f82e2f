"""The torch backend: a Hugging Face causal LM run step by step with a KV cache.

The reference the ONNX backend is checked against. Imports torch and transformers, so it is
only imported when chosen.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, DynamicCache

logger = logging.getLogger(__name__)


class TorchBackend:
    """Runs an HF model; the cache travels as a flat list of (B, H, T, D) tensors."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        # transformers 5 renamed the cache argument (`past_key_values` -> `cache`)
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )

    @classmethod
    def load(cls, directory: Path, device: str = "cpu", num_threads: int | None = None) -> TorchBackend:
        if num_threads:
            torch.set_num_threads(num_threads)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        logger.info("loaded %s (%s) on %s", directory, type(model).__name__, device)
        return cls(model, device)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[torch.Tensor] | None,
        all_logits: bool = False,
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        # full-length layers even where the model has a sliding window (without `config`, no
        # layer truncates itself): transformers' sliding mask applies the window over the cache
        # positions, and every layer stays as long as the loop's attention mask, which the
        # loop's select/merge/trim rely on (the ONNX export keeps its cache the same way)
        cache = DynamicCache()
        for i in range(0, len(past or ()), 2):
            cache.update(past[i], past[i + 1], i // 2)
        out = self.model(
            input_ids=torch.from_numpy(input_ids).to(self.device),
            attention_mask=torch.from_numpy(attention_mask).to(self.device),
            position_ids=torch.from_numpy(position_ids).to(self.device),
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,  # 0: every position (prompt logprobs)
            **{self._cache_arg: cache},
        )
        new_cache = getattr(out, "cache", None) or out.past_key_values
        flat: list[torch.Tensor] = []
        for layer in new_cache.layers:
            flat += [layer.keys, layer.values]
        logits = out.logits if all_logits else out.logits[:, -1]
        return logits.float().cpu().numpy(), flat

    def select(self, past: list[torch.Tensor], rows: np.ndarray) -> list[torch.Tensor]:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        return [t.index_select(0, index) for t in past]

    def merge(self, first: list[torch.Tensor], second: list[torch.Tensor]) -> list[torch.Tensor]:
        length = max(first[0].shape[2], second[0].shape[2])
        return [
            torch.cat([_left_pad(a, length), _left_pad(b, length)])
            for a, b in zip(first, second, strict=True)
        ]

    def trim(self, past: list[torch.Tensor], columns: int) -> list[torch.Tensor]:
        return [t[:, :, columns:].contiguous() for t in past]

    def prefix(self, past: list[torch.Tensor], row: int, first: int, length: int) -> list[torch.Tensor]:
        return [t[row : row + 1, :, first : first + length].clone() for t in past]

    def extend_from(self, prefix: list[torch.Tensor], length: int, room: int) -> list[torch.Tensor]:
        # DynamicCache concatenates the new columns into new tensors: the copy is only read
        return [t[:, :, :length] for t in prefix]


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[2]
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0))
