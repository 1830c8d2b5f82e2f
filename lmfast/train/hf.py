"""`hf/`: a Lightning checkpoint turned into a plain Hugging Face model directory (DESIGN.md §2)."""

from __future__ import annotations

from pathlib import Path

import torch


def checkpoint_to_hf(checkpoint_path: str | Path, output_dir: str | Path, tokenizer_dir: str | Path) -> Path:
    """Rebuild the model from a `.ckpt` (`model_config` + `model.*` weights) and `save_pretrained` it with the tokenizer.

    Uses only the checkpoint contract, exactly what the export stage relies on.

    Returns:
        `output_dir`, loadable by `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model_config = dict(checkpoint["hyper_parameters"]["model_config"])
    config = AutoConfig.for_model(model_config.pop("model_type"), **model_config)
    model = AutoModelForCausalLM.from_config(config)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied weights (lm_head <- wte) may be listed as missing; anything else is a broken checkpoint
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint_path}: state_dict does not fit the model (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    if config.vocab_size > len(tokenizer):
        # rows added to round the vocabulary up (50257 -> 50304) are no tokens: never generate them
        model.generation_config.suppress_tokens = list(range(len(tokenizer), config.vocab_size))
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
