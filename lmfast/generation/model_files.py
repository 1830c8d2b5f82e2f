"""Where a model lives on disk and the facts the decode loop needs from its `config.json`.

Three layouts load: an export dir (`model.onnx`, DESIGN.md §3), an experiment dir (its `hf/`,
DESIGN.md §2) and a Hugging Face `save_pretrained` dir. Reads JSON only: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ModelKind = Literal["onnx", "hf"]


@dataclass(frozen=True)
class ModelInfo:
    """What the loop needs to know about a causal LM, read from its HF `config.json`."""

    model_type: str
    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    @classmethod
    def from_config(cls, config: dict[str, Any], generation_config: dict[str, Any] | None = None) -> ModelInfo:
        """From `config.json`, plus the eos ids of a Hugging Face `generation_config.json`.

        The latter may list more eos ids than config.json (a chat model ends its turns with one and
        its documents with another); generation stops at any of them, as transformers' `generate` does.
        """
        context = None
        for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
            if isinstance(config.get(key), int):
                context = config[key]
                break
        if context is None:
            raise ValueError("config.json names no context length (n_positions / max_position_embeddings)")
        eos_ids = _ids(config.get("eos_token_id"))
        extra = _ids((generation_config or {}).get("eos_token_id"))
        eos_ids += tuple(i for i in extra if i not in eos_ids)
        return cls(
            model_type=str(config.get("model_type", "unknown")),
            vocab_size=int(config["vocab_size"]),
            max_context=int(context),
            eos_token_ids=eos_ids,
            bos_token_id=config.get("bos_token_id"),
        )


def _ids(value: Any) -> tuple[int, ...]:
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return () if value is None else (int(value),)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def resolve_model_dir(path: str | Path) -> tuple[Path, ModelKind]:
    """Find the model files under `path` and say which backend family can read them.

    Returns:
        (directory holding config.json and the tokenizer, "onnx" or "hf").

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is neither an export, an experiment nor a Hugging Face model dir.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir() and (path / "model.onnx").is_file():
        return path, "onnx"
    if path.is_dir() and (path / "hf" / "config.json").is_file():
        return path / "hf", "hf"
    if path.is_dir() and (path / "config.json").is_file():
        return path, "hf"
    raise ValueError(
        f"{path}: not a model directory (expected an export dir with model.onnx, an experiment dir "
        "with hf/, or a Hugging Face model dir with config.json)"
    )
