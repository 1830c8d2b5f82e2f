"""Model factory: padded vocabulary, SDPA attention, tokenizer and vocabulary checks, FLOP count."""

from __future__ import annotations

import json

import pytest

from lmfast.models.dataset import PreparedDataset
from lmfast.train.model import DatasetTokenizer, TrainInputError, build_model, flops_per_token


def _tokenizer(dataset_dir) -> DatasetTokenizer:
    return DatasetTokenizer.from_dataset(dataset_dir, PreparedDataset(dataset_dir).description)


def test_presets_pad_the_vocabulary_and_use_sdpa(dataset_dir):
    tokenizer = _tokenizer(dataset_dir)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    model = build_model("gpt2-tiny", tokenizer, 64, None)
    assert model.config.vocab_size == 50304
    assert model.config._attn_implementation == "sdpa"
    gpt2 = __import__("lmfast.train.model", fromlist=["preset_config"]).preset_config(
        "gpt2", tokenizer, 64, None
    )
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.vocab_size, gpt2.n_positions) == (12, 768, 50304, 1024)


def test_fine_tuning_a_matching_model_dir(dataset_dir, tiny_model_dir):
    model = build_model(str(tiny_model_dir), _tokenizer(dataset_dir), 64, 0.0)
    assert model.config.vocab_size == 50257 and model.config.resid_pdrop == 0.0


def test_mismatched_tokenizer_is_refused(dataset_dir, tiny_model_dir, tmp_path):
    import shutil

    other = tmp_path / "model"
    shutil.copytree(tiny_model_dir, other)
    tokenizer_json = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer_json["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    with pytest.raises(TrainInputError, match="tokenizer does not match the dataset's"):
        build_model(str(other), _tokenizer(dataset_dir), 64, None)


def test_flops_per_token_matches_the_gpt2_124m_figure(dataset_dir):
    from lmfast.train.model import preset_config

    config = preset_config("gpt2", _tokenizer(dataset_dir), 1024, None)
    n = 124_475_904 - 1024 * 768 + (50304 - 50257) * 768  # HF GPT-2 params, padded vocab, minus wpe
    expected = 6 * n + 12 * 12 * 768 * 1024
    assert flops_per_token(config, n + 1024 * 768, 1024) == pytest.approx(expected)


def test_flops_per_token_counts_weight_gradients_of_trainable_parameters_only(dataset_dir):
    """LoRA: frozen weights run forward and pass gradients back (4 N) but get none (2 N_trainable)."""
    from lmfast.train.model import preset_config

    config = preset_config("gpt2", _tokenizer(dataset_dir), 1024, None)
    total = 124_000_000 + 1024 * 768  # position embeddings are lookups, not counted
    attention = 12 * 12 * 768 * 1024
    assert flops_per_token(config, total, 1024, 1_000_000) == pytest.approx(
        4 * 124_000_000 + 2 * 1_000_000 + attention
    )
    full = flops_per_token(config, total, 1024)
    assert flops_per_token(config, total, 1024, total) == pytest.approx(full)  # all trainable: 6 N
    assert full / flops_per_token(config, total, 1024, 0) == pytest.approx(
        (6 * 124e6 + attention) / (4 * 124e6 + attention)
    )
