"""What `lmfast export onnx SOURCE` reads: an experiment dir (its hf/, else its LoRA adapter/), a
Lightning `.ckpt`, an HF dir, a PEFT LoRA adapter dir (merged onto its local base model) or a
`.gguf` file (dequantized once into a cached HF dir by `lmfast.models.gguf`).

A file that cannot be read (truncated, zeroed, not what its name says) is a ValueError naming
it, so the CLI prints one line and exits 2 instead of a loader's traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfast.flags import one_line
from lmfast.models.families import check_exportable
from lmfast.models.source import ADAPTER_CONFIG, ModelSource, SourceKind, resolve_source

EXPORTABLE: tuple[SourceKind, ...] = ("hf", "checkpoint", "lora_adapter")
"""What export (and eval with torch) loads: HF weights, a .ckpt, a LoRA adapter (`resolve_source` kinds)."""

# everything the tokenizer, chat formatting and prompt encoding need: special tokens, the chat
# template and the experiment's prompt prefix
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "prompt_encoding.json",  # lmfast.generation.text.PROMPT_ENCODING_FILE: how prompts begin
)


@dataclass
class LoadedSource:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer_dir: Path
    description: dict[str, Any]  # what was loaded, for export.json


def load_source(source: Path | ModelSource) -> LoadedSource:
    """Load the torch model and find the tokenizer of SOURCE (a path, or its `resolve_source` answer).

    Raises:
        FileNotFoundError: SOURCE does not exist, or a checkpoint without its experiment's hf/.
        ValueError: SOURCE is not a checkpoint or model dir, or its architecture is unsupported.
    """
    resolved = source if isinstance(source, ModelSource) else resolve_source(source, EXPORTABLE)
    if resolved.kind == "checkpoint":
        return _load_checkpoint(resolved.path)
    loaded = _load_adapter(resolved.path) if resolved.kind == "lora_adapter" else _load_hf_dir(resolved.path)
    if resolved.origin == "gguf":
        loaded.description.update(converted=str(resolved.path))
    if resolved.origin in ("gguf", "experiment"):
        loaded.description.update(kind=resolved.origin, path=str(resolved.given.resolve()))
    return loaded


def _load_adapter(adapter_dir: Path) -> LoadedSource:
    """A PEFT LoRA adapter merged onto its base model (`base_model_name_or_path`, a local dir:
    nothing is downloaded); the tokenizer is the adapter's own if saved with it, else the base's.

    Raises:
        ValueError: the adapter config is unreadable, or its base model is not a local model dir.
    """
    config_path = adapter_dir / ADAPTER_CONFIG
    try:
        adapter = json.loads(config_path.read_text(encoding="utf-8"))
        base = adapter.get("base_model_name_or_path")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{config_path}: not a PEFT adapter config ({one_line(error)})") from error
    base_dir = Path(base) if isinstance(base, str) and base else None
    if base_dir is None or not (base_dir / "config.json").is_file():
        raise ValueError(
            f"{config_path}: the base model {base!r} is not available offline (no model dir with "
            "config.json there); export the experiment's hf/ (the merged model) instead"
        )
    loaded = _load_hf_dir(base_dir)
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(loaded.model, adapter_dir).merge_and_unload()
    except Exception as error:  # peft, safetensors and torch each raise their own types
        raise ValueError(f"{adapter_dir}: the adapter does not fit {base_dir}: {one_line(error)}") from error
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else loaded.tokenizer_dir
    description = {"kind": "lora_adapter", "path": str(adapter_dir.resolve()), "base_model": str(base_dir)}
    return LoadedSource(model.eval(), tokenizer_dir, description)


def _load_hf_dir(directory: Path) -> LoadedSource:
    import torch
    from transformers import AutoModelForCausalLM

    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    check_exportable(config, directory)
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{directory}: no tokenizer.json (save a fast tokenizer with the model)")
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    except Exception as error:  # safetensors, torch and transformers each raise their own types
        raise ValueError(
            f"{directory}: cannot read the model weights (truncated or corrupt?): {one_line(error)}"
        ) from error
    return LoadedSource(model, directory, {"kind": "hf", "path": str(directory.resolve())})


def _load_checkpoint(path: Path) -> LoadedSource:
    """A Lightning checkpoint per docs/architecture.md §2, rebuilt by the one checkpoint reader
    (`lmfast.models.checkpoint`; a LoRA checkpoint is merged onto its base); the tokenizer is the
    experiment's hf/."""
    from lmfast.models.checkpoint import checkpoint_model, load_checkpoint

    checkpoint = load_checkpoint(path)  # CheckpointError (a ValueError) names the file
    try:
        model_config = dict(checkpoint["hyper_parameters"]["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: not an lmfast checkpoint (needs state_dict and hyper_parameters['model_config'])"
        ) from error
    check_exportable(model_config, path)
    tokenizer_dir = path.resolve().parent.parent / "hf"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer at {tokenizer_dir} (the experiment's hf/ next to checkpoints/)"
        )
    model = checkpoint_model(checkpoint, path)
    description = {"kind": "checkpoint", "path": str(path.resolve()), "tokenizer": str(tokenizer_dir)}
    for key in ("epoch", "global_step"):
        if key in checkpoint:
            description[key] = checkpoint[key]
    return LoadedSource(model.eval(), tokenizer_dir, description)
