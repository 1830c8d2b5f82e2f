"""Every exportable decoder family on a tiny random config: export parity, and lmfast's greedy
tokens (ONNX and torch, left-padded batch) equal to Hugging Face `generate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmfast.export import ExportConfig
from lmfast.generation import GenerationParams, Generator
from lmfast.models.families import EXPORTABLE_FAMILIES, export_refusal

GPT2_ASSETS = Path(__file__).parents[2] / "lmfast" / "assets" / "gpt2"
WINDOW = 6  # sliding window smaller than the prompts below, so the window really cuts
COMMON = dict(
    vocab_size=50257,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.3,
    bos_token_id=50256,
    eos_token_id=50256,
    pad_token_id=0,
)
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": WINDOW},
    "qwen2": {"sliding_window": WINDOW, "use_sliding_window": True, "max_window_layers": 1},
    "qwen3": {},
    "phi3": {},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "sliding_window": WINDOW, "attn_logit_softcapping": 5.0},
    "gpt2": {},
    "gpt_neox": {},
}


def _config(family: str, **overrides):
    from transformers import AutoConfig, GPT2Config, GPTNeoXConfig

    values = {**COMMON, **FAMILIES[family], **overrides}
    if family == "gpt2":
        config = GPT2Config(
            n_layer=2, n_embd=32, n_head=4, n_positions=128, vocab_size=50257, initializer_range=0.3
        )
    elif family == "gpt_neox":
        values.pop("num_key_value_heads")
        config = GPTNeoXConfig(**values)
    else:
        config = AutoConfig.for_model(family, **values)
    return config


def _save(directory: Path, family: str, **overrides) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config(family, **overrides)).eval().save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(GPT2_ASSETS).save_pretrained(directory)
    return directory


def _hf_greedy(source: Path, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """Hugging Face `generate` on the left-padded batch (its own mask, positions and cache)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    out = model.generate(
        **batch,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[:, batch["input_ids"].shape[1] :].tolist()


def _lmfast_greedy(generator: Generator, prompts: list[str], new_tokens: int) -> list[list[int]]:
    session = generator.session()
    params = GenerationParams(max_new_tokens=new_tokens, temperature=0.0)
    rows = [session.add(p, params)[0] for p in prompts]
    tokens: dict[int, list[int]] = {row: [] for row in rows}
    while len(session):
        for event in session.step():
            tokens[event.row_id].append(event.token_id)
    return [tokens[row] for row in rows]


def test_every_listed_family_has_a_parity_config():
    assert set(FAMILIES) == set(EXPORTABLE_FAMILIES)


def test_refusals_name_the_reason():
    assert export_refusal({"model_type": "llama"}) is None
    assert "unsupported architecture 'bert'" in export_refusal({"model_type": "bert"})
    dynamic = {"model_type": "llama", "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    assert "recomputes rotary frequencies" in export_refusal(dynamic)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_with_parity_and_greedy_equal_to_hf(family, tmp_path, prompts, monkeypatch):
    from lmfast.export import export_onnx

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _save(tmp_path / family, family)
    decoder = "transformers" if family in ("gpt2", "llama") else "auto"  # the generic path, always
    output = export_onnx(
        ExportConfig(source=source, output=tmp_path / "export", parity_steps=12, decoder=decoder)
    )
    description = json.loads((output / "export.json").read_text())
    assert description["model_type"] == family and description["parity"]["passed"]
    assert description["decoder"] == "TransformersDecoder"

    new_tokens = 10
    onnx_tokens = _lmfast_greedy(Generator.load(output), prompts, new_tokens)
    assert onnx_tokens == _hf_greedy(source, prompts, new_tokens)
    assert onnx_tokens == _lmfast_greedy(Generator.load(source), prompts, new_tokens)
    assert len({t for row in onnx_tokens for t in row}) > 3  # varied output, not one token repeated


@pytest.mark.slow
def test_sliding_window_really_limits_attention(tmp_path, prompts):
    """The exported Mistral attends only within its window: logits of a prompt longer than the
    window differ from those of the same weights without a window, and match HF's."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmfast.export import export_onnx

    source = _save(tmp_path / "mistral", "mistral")
    output = export_onnx(ExportConfig(source=source, output=tmp_path / "export", parity_steps=4))
    generator = Generator.load(output)
    ids = np.array([generator.codec.encode(max(prompts, key=len))[: 4 * WINDOW]], dtype=np.int64)
    assert ids.shape[1] > WINDOW
    mask, positions = np.ones_like(ids), np.arange(ids.shape[1])[None]
    logits, _ = generator.backend.forward(ids, mask, positions, None)
    unwindowed = AutoModelForCausalLM.from_pretrained(source, sliding_window=None).eval()
    windowed = AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        full = unwindowed(input_ids=torch.from_numpy(ids)).logits[:, -1].numpy()
        cut = windowed(input_ids=torch.from_numpy(ids)).logits[:, -1].numpy()
    assert np.abs(full - cut).max() > 1e-2
    np.testing.assert_allclose(logits, cut, atol=1e-4)


@pytest.mark.slow
def test_train_refuses_a_model_that_cannot_export_before_training(tmp_path, nietzsche_dir):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**__import__("os").environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    prepare = [
        *(sys.executable, "-m", "lmfast", "prepare"),
        *("--documents_train_file", str(nietzsche_dir / "train.txt")),
        *("--documents_valid_file", str(nietzsche_dir / "valid.txt")),
        *("--end_of_document", "[END_OF_DOCUMENT]", "--tokenizer_cls_name", "GPT2Tokenizer"),
        *("--max_sample_length", "64", "--min_sample_length", "8"),
        *("--datasets_root", str(tmp_path / "datasets"), "--dataset_name", "n"),
    ]
    assert subprocess.run(prepare, env=env, capture_output=True, timeout=600).returncode == 0
    model = _save(tmp_path / "llama", "llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    train = [
        *(sys.executable, "-m", "lmfast", "train", "--model", str(model), "--max_steps", "2"),
        *("--dataset_dir", str(tmp_path / "datasets" / "n" / "0"), "--num_workers", "0"),
        *("--experiments_root", str(tmp_path / "experiments"), "--experiment_name", "refused"),
    ]
    result = subprocess.run(train, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "could not export" in result.stderr and "recomputes rotary frequencies" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "experiments" / "refused" / "0" / "checkpoints").exists()
