"""GGUF -> HF dir on the real SmolLM2 weights: the saved model is the GGUF model, chat template kept."""

from __future__ import annotations

import json

import pytest

from lmfast.models.gguf import converted_dir, is_gguf

pytestmark = pytest.mark.slow


def test_converted_model_equals_the_gguf_model(smollm2_gguf, smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    saved = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, original(ids).logits, rtol=0, atol=1e-4)
        answer = saved.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    assert "Paris" in tokenizer.decode(answer)


def test_cache_is_reused_and_non_gguf_refused(smollm2_gguf, smollm2_dir, session_model_cache, tmp_path):
    """The session fixture converted into $LMFAST_CACHE; asking again returns that dir untouched."""
    assert is_gguf(smollm2_gguf) and not is_gguf(tmp_path)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf file")
    assert not is_gguf(not_gguf)
    assert smollm2_dir.parent == session_model_cache / "gguf"
    marker_time = (smollm2_dir / ".lmfast-gguf-done").stat().st_mtime_ns
    assert converted_dir(smollm2_gguf) == smollm2_dir
    assert converted_dir(smollm2_gguf, cache_dir=session_model_cache / "gguf") == smollm2_dir
    assert (smollm2_dir / ".lmfast-gguf-done").stat().st_mtime_ns == marker_time
    assert not list(smollm2_dir.parent.glob(".*partial*"))
