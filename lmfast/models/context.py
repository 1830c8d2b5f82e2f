"""The context length a Hugging Face `config.json` names: one reading for training and inference.

Families spell it differently (GPT-2 `n_positions`, Llama and most others
`max_position_embeddings`, older ones `n_ctx` or `seq_length`); the first positive integer wins.
Pure Python: the generator reads it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_length(config: Mapping[str, Any] | Any) -> int | None:
    """The context of CONFIG (a config.json dict or a transformers config object), or None."""
    for key in CONTEXT_KEYS:
        value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
