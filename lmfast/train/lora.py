"""LoRA fine-tuning through Hugging Face PEFT: only the low-rank adapters train and are checkpointed.

A LoRA checkpoint holds the adapter weights (`model.base_model.model.<HF name>.lora_*`) and, in
`hyper_parameters["lora"]`, the PEFT settings and the pretrained model dir they apply to
(`lmfast.models.checkpoint.LoraSettings`, which also reads them back); `lmfast.train.hf` merges them
into a plain `hf/` and writes the adapter beside it.
"""

from __future__ import annotations

import logging
from typing import Any

from lmfast.models.checkpoint import LoraSettings

log = logging.getLogger("lmfast.train")


def apply_lora(model: Any, settings: LoraSettings) -> Any:
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
