"""The `.ckpt` format every stage reads (docs/architecture.md §2): integrity, the model it holds, its LoRA settings.

Training writes checkpoints and the export and eval stages read them; this is the one reader, so
none of those stages imports another for it.

Checkpoint files prove their own integrity: a CRC-32 of every value travels inside the `.ckpt`.

torch's zip reader skips the zip CRC checks, so a checkpoint with a zeroed block loads "fine" and
resumes silently wrong. Every checkpoint lmfast writes carries `lmfast_checksum` (CRC-32 over each
tensor's bytes and each plain value, in key order), and `load_checkpoint` recomputes it: a
truncated, empty, random or zeroed file is one `CheckpointError` naming the file.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, TypedDict, cast

import torch

from lmfast.flags import UserError

CHECKSUM_KEY = "lmfast_checksum"


class CheckpointError(UserError):
    """The file is not a readable lmfast checkpoint, or its content no longer matches its checksum."""


def _update(crc: int, key: str, value: Any) -> int:
    crc = zlib.crc32(key.encode("utf-8", "surrogatepass"), crc)
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        crc = zlib.crc32(f"{tensor.dtype}{tuple(value.shape)}".encode(), crc)
        return zlib.crc32(tensor.view(torch.uint8).numpy().data, crc) if tensor.numel() else crc
    if isinstance(value, dict):
        for k in sorted(value, key=str):
            crc = _update(crc, f"{key}/{k}", value[k])
        return crc
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            crc = _update(crc, f"{key}[{i}]", item)
        return crc
    return zlib.crc32(repr(value).encode("utf-8", "surrogatepass"), crc)


def checksum(checkpoint: dict[str, Any]) -> int:
    """CRC-32 over every entry but the checksum itself (tensors by their raw bytes)."""
    crc = 0
    for key in sorted(checkpoint):
        if key != CHECKSUM_KEY:
            crc = _update(crc, key, checkpoint[key])
    return crc


def with_checksum(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The same dict with `lmfast_checksum` set (what every lmfast `.ckpt` holds)."""
    checkpoint[CHECKSUM_KEY] = {"algorithm": "crc32", "value": checksum(checkpoint)}
    return checkpoint


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a `.ckpt` (tensors and plain values only) and verify its checksum.

    A checkpoint without `lmfast_checksum` (written before lmfast had one) is accepted as is.

    Raises:
        CheckpointError: missing, empty, truncated or not a checkpoint, or a checksum mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip, pickle and storage errors all mean "unreadable"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted: {reason})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    saved = checkpoint.get(CHECKSUM_KEY)
    if saved is not None:
        expected = saved.get("value") if isinstance(saved, dict) else None
        if expected != checksum(checkpoint):
            raise CheckpointError(
                f"{path}: checksum mismatch, the file is corrupted (content changed after it was written)"
            )
    return checkpoint


class LoraKeywords(TypedDict):
    """PEFT `LoraConfig` keywords, as a LoRA checkpoint records them."""

    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: str | list[str]
    task_type: str


class LoraSettings(TypedDict):
    """`hyper_parameters["lora"]` of a LoRA checkpoint: the adapters' settings and the base model they
    apply to. A plain dict on disk (checkpoints load with `weights_only=True`), typed here."""

    base_model: str
    config: LoraKeywords


def lora_settings(
    r: int, alpha: float | None, dropout: float, target_modules: str, base_model: str | Path
) -> LoraSettings:
    """What a LoRA checkpoint records: `LoraConfig` keywords plus the base model's directory."""
    targets: str | list[str] = target_modules.strip()
    if targets != "all-linear":
        targets = [name.strip() for name in target_modules.split(",") if name.strip()]
    return {
        "base_model": str(Path(base_model).resolve()),
        "config": {
            "r": int(r),
            "lora_alpha": float(alpha if alpha is not None else 2 * r),
            "lora_dropout": float(dropout),
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
        },
    }


def checkpoint_lora(
    checkpoint: dict[str, Any], checkpoint_path: str | Path = "checkpoint"
) -> LoraSettings | None:
    """The LoRA settings of a checkpoint, or None for a full model's.

    Raises:
        CheckpointError: a `lora` entry without the base model or the PEFT keywords.
    """
    settings = checkpoint.get("hyper_parameters", {}).get("lora")
    if not settings:
        return None
    if not (
        isinstance(settings, dict)
        and isinstance(settings.get("base_model"), str)
        and isinstance(settings.get("config"), dict)
    ):
        raise CheckpointError(f"{checkpoint_path}: hyper_parameters['lora'] needs base_model and config")
    return cast(LoraSettings, settings)


def model_from_checkpoint(checkpoint: dict[str, Any], checkpoint_path: str | Path = "checkpoint") -> Any:
    """The HF model a checkpoint holds: `model_config` + the `model.*` weights (the checkpoint contract).

    Raises:
        ValueError: the weights do not fit the config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = dict(checkpoint["hyper_parameters"]["model_config"])
    config = AutoConfig.for_model(model_config.pop("model_type"), **model_config)
    model = AutoModelForCausalLM.from_config(config)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes that do not match the config
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"{checkpoint_path}: state_dict does not fit the model: {reason}") from error
    # tied weights (lm_head <- wte) may be listed as missing; anything else is a broken checkpoint
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint_path}: state_dict does not fit the model (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    return model


def load_lora(checkpoint: dict[str, Any], checkpoint_path: str | Path) -> Any:
    """The PEFT model of a LoRA checkpoint: its base model with the checkpoint's adapters loaded (eval mode).

    Raises:
        ValueError: the base model is gone, or the adapters do not fit it.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    settings = checkpoint_lora(checkpoint, checkpoint_path)
    if settings is None:
        raise CheckpointError(f"{checkpoint_path}: not a LoRA checkpoint (no hyper_parameters['lora'])")
    base_dir = Path(settings["base_model"])
    if not (base_dir / "config.json").is_file():
        raise ValueError(f"{checkpoint_path}: its LoRA base model {base_dir} is missing (no config.json)")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(**settings["config"]))
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    missing, unexpected = peft_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "lora_" in k]
    if missing or unexpected or not state:
        raise ValueError(
            f"{checkpoint_path}: adapters do not fit {base_dir} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return peft_model.eval()


def checkpoint_model(checkpoint: dict[str, Any], checkpoint_path: str | Path = "checkpoint") -> Any:
    """The plain HF model of any lmfast checkpoint: a LoRA one merged onto its base (eval mode)."""
    if checkpoint_lora(checkpoint, checkpoint_path) is not None:
        return load_lora(checkpoint, checkpoint_path).merge_and_unload().eval()
    return model_from_checkpoint(checkpoint, checkpoint_path).eval()
