"""What `lmfast export onnx SOURCE` reads: an experiment dir, a Lightning `.ckpt`, an HF dir or a
`.gguf` file (dequantized once into a cached HF dir by `lmfast.models.gguf`).

A file that cannot be read (truncated, zeroed, not what its name says) is a ValueError naming
it, so the CLI prints one line and exits 2 instead of a loader's traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfast.export.families import check_exportable

# everything the tokenizer and chat formatting need: special tokens and the chat template
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass
class LoadedSource:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer_dir: Path
    description: dict[str, Any]  # what was loaded, for export.json


def load_source(source: Path) -> LoadedSource:
    """Load the torch model and find the tokenizer of SOURCE.

    Raises:
        FileNotFoundError: SOURCE does not exist, or a checkpoint without its experiment's hf/.
        ValueError: SOURCE is not a checkpoint or model dir, or its architecture is unsupported.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or directory")
    if source.is_file() and source.suffix == ".ckpt":
        return _load_checkpoint(source)
    if source.is_file() and source.suffix == ".gguf":
        from lmfast.generation.model_files import gguf_dir

        loaded = _load_hf_dir(gguf_dir(source))
        loaded.description.update(
            kind="gguf", path=str(source.resolve()), converted=str(loaded.tokenizer_dir)
        )
        return loaded
    if source.is_dir() and (source / "hf" / "config.json").is_file():
        loaded = _load_hf_dir(source / "hf")
        loaded.description.update(kind="experiment", path=str(source.resolve()))
        return loaded
    if source.is_dir() and (source / "config.json").is_file():
        return _load_hf_dir(source)
    raise ValueError(
        f"{source}: not a checkpoint or model (expected an experiment dir with hf/, a .ckpt file, "
        "a Hugging Face model dir with config.json, or a .gguf file)"
    )


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
            f"{directory}: cannot read the model weights (truncated or corrupt?): {_one_line(error)}"
        ) from error
    return LoadedSource(model, directory, {"kind": "hf", "path": str(directory.resolve())})


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load_checkpoint(path: Path) -> LoadedSource:
    """A Lightning checkpoint per docs/architecture.md §2: `state_dict` keys `model.<HF name>`,
    `hyper_parameters["model_config"]` the HF config dict; the tokenizer is the experiment's hf/."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    # our own checkpoints pickle plain dicts; Lightning may add objects weights_only would refuse
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # zip, pickle and EOF errors for truncated or random bytes
        raise ValueError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {_one_line(error)}"
        ) from error
    try:
        model_config = dict(checkpoint["hyper_parameters"]["model_config"])
        state = checkpoint["state_dict"]
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
    config = AutoConfig.for_model(model_config.pop("model_type"), **model_config)
    model = AutoModelForCausalLM.from_config(config)
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # tensor shapes that do not match the config
        raise ValueError(f"{path}: state_dict does not fit the model: {_one_line(error)}") from error
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embedding
    if missing or unexpected:
        raise ValueError(
            f"{path}: state_dict does not fit the model (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    description = {"kind": "checkpoint", "path": str(path.resolve()), "tokenizer": str(tokenizer_dir)}
    for key in ("epoch", "global_step"):
        if key in checkpoint:
            description[key] = checkpoint[key]
    return LoadedSource(model.eval(), tokenizer_dir, description)
