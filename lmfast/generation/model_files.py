"""Where a model lives on disk and the facts the decode loop needs from its `config.json`.

Four layouts load: an export dir (`model.onnx`, docs/architecture.md §3), an experiment dir (its `hf/`,
docs/architecture.md §2), a Hugging Face `save_pretrained` dir and a `.gguf` file (converted once into a
cached HF dir by `lmfast.models.gguf`, which needs torch and transformers). Otherwise JSON only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmfast.models.context import context_length

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
    if path.is_file() and path.suffix == ".gguf":
        return gguf_dir(path), "hf"
    if path.is_dir() and (path / "model.onnx").is_file():
        return path, "onnx"
    if path.is_dir() and (path / "hf" / "config.json").is_file():
        return path / "hf", "hf"
    if path.is_dir() and (path / "config.json").is_file():
        return path, "hf"
    raise ValueError(
        f"{path}: not a model directory (expected an export dir with model.onnx, an experiment dir "
        "with hf/, a Hugging Face model dir with config.json, or a .gguf file)"
    )


def gguf_dir(path: Path) -> Path:
    """The cached HF dir of a `.gguf` file (converted on first use).

    Raises:
        ValueError: not a GGUF file, or one transformers cannot read.
    """
    from lmfast.models.gguf import converted_dir, is_gguf

    if not is_gguf(path):
        raise ValueError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    return converted_dir(path)
