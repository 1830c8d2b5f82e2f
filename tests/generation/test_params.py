"""GenerationParams: the one place defaults and bounds live."""

from __future__ import annotations

import json

import pytest

from lmfast.generation.params import GenerationParams


def test_defaults_are_valid_and_round_trip(tmp_path):
    params = GenerationParams(stop=["\n\n"], banned_words=["God"], seed=3)
    path = tmp_path / "generation_config.json"
    params.save(path)
    assert GenerationParams.from_file(path) == params


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"num_return_sequences": 0}, "num_return_sequences"),
        ({"seed": -5}, "seed"),
    ],
)
def test_out_of_range_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        GenerationParams(**changes)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="temprature"):
        GenerationParams.from_dict({"temprature": 0.5})


def test_greedy_and_empty_lists_are_cleaned():
    params = GenerationParams(temperature=0.0, stop=["", "END"], banned_words=[" ", "x"])
    assert params.greedy
    assert params.stop == ["END"] and params.banned_words == ["x"]


def test_an_hf_generation_config_that_says_do_sample_false_defaults_to_greedy(tmp_path):
    """HF's generate ignores temperature without do_sample, so the model's default is greedy."""
    from lmfast.generation.generator import _default_params

    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"do_sample": False, "temperature": 0.6, "top_p": 0.9}))
    assert _default_params(tmp_path).temperature == 0.0
    path.write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    sampled = _default_params(tmp_path)
    assert (sampled.temperature, sampled.top_p) == (0.6, 0.9)
