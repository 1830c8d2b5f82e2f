"""LoRA fine-tuning through Hugging Face PEFT: only the low-rank adapters train and are checkpointed.

A LoRA checkpoint holds the adapter weights (`model.base_model.model.<HF name>.lora_*`) and, in
`hyper_parameters["lora"]`, the PEFT settings and the pretrained model dir they apply to;
`lmfast.train.hf` merges them into a plain `hf/` and writes the adapter beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("lmfast.train")


def lora_settings(
    r: int, alpha: float | None, dropout: float, target_modules: str, base_model: str | Path
) -> dict[str, Any]:
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


def apply_lora(model: Any, settings: dict[str, Any]) -> Any:
    """Wrap `model` in PEFT adapters (base weights frozen); returns the `PeftModel` in train mode.

    Raises:
        ValueError: no module of the model matches the target modules.
    """
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(**settings["config"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "LoRA r=%d on %s: %d of %d parameters train (%.2f%%)",
        settings["config"]["r"],
        settings["config"]["target_modules"],
        trainable,
        total,
        100 * trainable / total,
    )
    return peft_model.train()


def load_lora(checkpoint: dict[str, Any], checkpoint_path: str | Path) -> Any:
    """The PEFT model of a LoRA checkpoint: its base model with the checkpoint's adapters loaded (eval mode).

    Raises:
        ValueError: the base model is gone, or the adapters do not fit it.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    settings = checkpoint["hyper_parameters"]["lora"]
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
