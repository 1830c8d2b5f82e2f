"""The tokenizer registry: GPT-2 by name, local HF tokenizers by path, new ones by registration."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer

from lmfast.data import tokenizers
from lmfast.data.tokenizers import Tokenizer, UnknownTokenizerError, load_tokenizer, register_tokenizer


def test_gpt2_is_the_real_gpt2(gpt2):
    assert gpt2.vocab_size == 50257
    assert (gpt2.bos_token_id, gpt2.eos_token_id, gpt2.pad_token_id) == (50256, 50256, 50256)
    assert gpt2.backend.encode("Hello world").ids == [15496, 995]
    assert gpt2.encode_document("Hello world") == [50256, 15496, 995, 50256]
    assert "GPT2Tokenizer" in tokenizers.registered_tokenizers()


def test_saved_tokenizer_round_trips_as_a_path(tmp_path, gpt2):
    directory = gpt2.save(tmp_path / "tok")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["eos_token"] == config["bos_token"] == config["pad_token"] == "<|endoftext|>"
    for spec in (directory, directory / "tokenizer.json"):
        loaded = load_tokenizer(str(spec))
        assert loaded.eos_token_id == 50256 and loaded.vocab_size == 50257
        assert loaded.encode_document("Hi there") == gpt2.encode_document("Hi there")


def test_vocab_and_merges_directory(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((tokenizers.GPT2_DIR / name).read_bytes())
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.backend.encode("Hello world").ids == [15496, 995]
    assert loaded.bos_token_id is None and loaded.eos_token_id is None


def test_registering_a_new_tokenizer(gpt2):
    @register_tokenizer("TestOnlyTokenizer")
    def factory() -> Tokenizer:
        return Tokenizer(name="TestOnlyTokenizer", backend=HFTokenizer.from_str(gpt2.backend.to_str()))

    try:
        assert load_tokenizer("TestOnlyTokenizer").bos_token_id is None
        with pytest.raises(ValueError, match="already registered"):
            register_tokenizer("TestOnlyTokenizer")(lambda: gpt2)
    finally:
        tokenizers._REGISTRY.pop("TestOnlyTokenizer")


def test_module_factory_spec():
    assert load_tokenizer("lmfast.data.tokenizers:gpt2_tokenizer").vocab_size == 50257
    with pytest.raises(UnknownTokenizerError, match="cannot import"):
        load_tokenizer("lmfast.nothing_here:factory")


def test_unknown_names_list_the_registry(tmp_path):
    with pytest.raises(UnknownTokenizerError, match="GPT2Tokenizer"):
        load_tokenizer("GPT3Tokenizer")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UnknownTokenizerError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="not in its vocabulary"):
        Tokenizer(name="x", backend=load_tokenizer("GPT2Tokenizer").backend, eos_token="<nope>")
