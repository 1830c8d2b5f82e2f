"""Which model configs `lmfast export onnx` can export, and why not when it cannot.

Reads a config dict only (no torch), so `lmfast train` can refuse a model up front, before hours
of training, with the same reason the exporter would give at the end.
"""

from __future__ import annotations

from typing import Any

# Every family here is exported through transformers' own modeling code (see decoder.py) and has
# a parity test on a tiny random config (tests/export/test_families.py).
EXPORTABLE_FAMILIES = {
    "gpt2": "GPT-2 (GPT2LMHeadModel: gpt2, distilgpt2, lmfast-trained GPT)",
    "gpt_neox": "GPT-NeoX (Pythia, GPT-NeoX-20B: parallel residual, partial rotary)",
    "llama": "Llama 2/3, SmolLM2, TinyLlama (RMSNorm, rotary, grouped-query attention)",
    "mistral": "Mistral (sliding-window attention)",
    "qwen2": "Qwen2 / Qwen2.5 (qkv bias, optional sliding window)",
    "qwen3": "Qwen3 (q/k RMSNorm)",
    "phi3": "Phi-3 (fused qkv and gate/up projections)",
    "gemma": "Gemma (scaled embeddings, GeGLU)",
    "gemma2": "Gemma 2 (attention and final logit soft-capping, alternating sliding window)",
}

# rotary scalings whose frequencies are recomputed from the sequence length at run time
_RUNTIME_ROPE = {"dynamic", "longrope"}


def export_refusal(config: dict[str, Any]) -> str | None:
    """Why a model with this HF config dict cannot be exported, or None when it can."""
    model_type = config.get("model_type")
    if model_type not in EXPORTABLE_FAMILIES:
        supported = ", ".join(EXPORTABLE_FAMILIES)
        return f"unsupported architecture {model_type!r} (lmfast exports: {supported})"
    if config.get("is_encoder_decoder") or config.get("add_cross_attention"):
        return f"{model_type} with cross-attention is not a decoder-only model"
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if isinstance(rope, dict):
            kind = rope.get("rope_type") or rope.get("type")
            if kind in _RUNTIME_ROPE:
                return (
                    f"{key} type {kind!r} recomputes rotary frequencies from the sequence length at "
                    "run time, which one traced graph cannot reproduce for every length"
                )
    return None


def check_exportable(config: dict[str, Any], where: object = "model") -> None:
    """Raise ValueError naming `where` and the reason when `config` cannot be exported."""
    reason = export_refusal(config)
    if reason is not None:
        raise ValueError(f"{where}: cannot export to ONNX: {reason}")
