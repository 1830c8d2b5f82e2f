"""The facts the decode loop needs from a model's `config.json` (and `generation_config.json`).

Which directory holds them is `lmfast.models.source.resolve_source`'s answer (kinds `LOADABLE`: an
export dir, an experiment dir's `hf/`, an HF dir, a `.gguf` file's converted dir). JSON only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfast.models.context import context_length
from lmfast.models.source import SourceKind

LOADABLE: tuple[SourceKind, ...] = ("onnx", "hf")
"""What generate, serve and eval decode with: an ONNX export or HF weights (`resolve_source` kinds)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the loop needs to know about a causal LM, read from its HF `config.json`."""

    model_type: str
    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelInfo:
        """From `config.json` alone (`from_dir` adds the eos ids of a generation_config.json)."""
        context = context_length(config)
        if context is None:
            raise ValueError("config.json names no context length (n_positions / max_position_embeddings)")
        return cls(
            model_type=str(config.get("model_type", "unknown")),
            vocab_size=int(config["vocab_size"]),
            max_context=int(context),
            eos_token_ids=eos_ids(config.get("eos_token_id")),
            bos_token_id=config.get("bos_token_id"),
        )

    @classmethod
    def from_dir(cls, directory: Path) -> ModelInfo:
        """`from_config` of DIRECTORY/config.json, stopping on every eos id that it or a Hugging
        Face `generation_config.json` beside it names (instruct models list several there)."""
        info = cls.from_config(read_json(Path(directory) / "config.json"))
        eos = info.eos_token_ids + tuple(
            i for i in hf_generation_eos(directory) if i not in info.eos_token_ids
        )
        return dataclasses.replace(info, eos_token_ids=eos)


def eos_ids(value: Any) -> tuple[int, ...]:
    """An HF `eos_token_id` (None, an int or a list) as a tuple of ints."""
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)


def hf_generation_eos(directory: Path) -> tuple[int, ...]:
    """The eos ids of an HF-format `generation_config.json` in DIRECTORY (none if absent, or if it
    is lmfast's own sampling-parameters file, which an export dir holds under that name)."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        values = read_json(path)
    except (ValueError, OSError):
        return ()
    return eos_ids(values.get("eos_token_id")) if isinstance(values, dict) else ()


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
