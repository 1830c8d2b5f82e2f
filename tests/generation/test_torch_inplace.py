"""The torch backend's in-place cache (the GPU path, checked here on the CPU): the same greedy
tokens as the concat reference through every `DecodeSession` path, rows joining and leaving
without copying the batch's cache, and logits picked on the device with ids alone coming back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lmfast.generation.model_files import ModelInfo
from lmfast.generation.params import GenerationParams
from lmfast.generation.prefix_cache import PrefixCache
from lmfast.generation.sampling import sample
from lmfast.generation.session import DecodeSession
from lmfast.generation.slot_cache import SlotCache
from lmfast.generation.text import TextCodec
from lmfast.generation.torch_backend import DeviceLogits, TorchBackend

GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def gpt2(varied_model_dir):
    return AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32), TextCodec.load(
        varied_model_dir
    )


@pytest.fixture(scope="module")
def llama(varied_model_dir):
    """A Llama-shaped model (rotary positions, grouped KV heads, as SmolLM2) on the GPT-2 tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, bos_token_id=50256,
        eos_token_id=50256,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), TextCodec.load(varied_model_dir)


def _session(model, codec, **backend) -> DecodeSession:
    session_args = backend.pop("session", {})
    info = ModelInfo.from_config(model.config.to_dict())
    return DecodeSession(TorchBackend(model, **backend), codec, info, **session_args)


def _both(model, codec, run, **session) -> tuple[dict, dict]:
    concat = run(_session(model, codec, cache="concat", session=dict(session)))
    inplace = run(_session(model, codec, cache="inplace", device_sampling=True, session=dict(session)))
    return concat, inplace


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_greedy_tokens_equal_the_concat_cache_with_rows_joining_and_leaving(
    which, request, prompts, run_to_end
):
    model, codec = request.getfixturevalue(which)
    adds = {
        0: [
            (p, GenerationParams(max_new_tokens=4 + 3 * i, temperature=0.0, ignore_eos=True))
            for i, p in enumerate(prompts[:3])
        ],
        2: [(prompts[3], GREEDY)],  # joins a running batch, shorter and longer than its rows
        5: [(prompts[0] * 2, GREEDY), (prompts[1], GREEDY)],
    }
    concat, inplace = _both(model, codec, lambda s: run_to_end(s, adds))
    assert concat == inplace and all(len(tokens) >= 4 for tokens in concat.values())


def test_chunked_prefill_and_the_prefix_cache_give_the_same_tokens(gpt2, prompts, run_to_end):
    model, codec = gpt2
    chat = prompts[2]
    adds = {0: [(chat, GREEDY)], 3: [(chat + " and then", GREEDY), (prompts[0], GREEDY)]}
    concat, inplace = _both(
        model, codec, lambda s: run_to_end(s, adds), step_token_budget=6, prefix_cache=PrefixCache(2**24, 4)
    )
    assert concat == inplace


def test_rows_leaving_and_joining_keep_the_batch_buffers_in_place(gpt2, prompts):
    model, codec = gpt2
    session = _session(model, codec, cache="inplace")
    for i, prompt in enumerate(prompts[:4]):
        session.add(prompt, GenerationParams(max_new_tokens=2 + 2 * i, temperature=0.0, ignore_eos=True))
    session.step()  # all four prefilled together
    past = session._batch.past
    assert isinstance(past, SlotCache) and isinstance(past.buffers[0], torch.Tensor)
    buffers, pointers = past.buffers, [b.data_ptr() for b in past.buffers]
    before = [b.clone() for b in buffers]
    held = {
        row.row_id: (int(slot), int(n))
        for row, slot, n in zip(session._batch.rows, past.slots, past.lengths, strict=True)
    }
    while session.num_running == 4:
        session.step()  # the first row leaves: its slot is freed, nothing is copied
    session.add(prompts[1], GREEDY)
    session.step()  # and a new one joins into that slot
    past = session._batch.past
    assert past.buffers is buffers and [b.data_ptr() for b in past.buffers] == pointers
    joined = next(
        int(slot) for row, slot in zip(session._batch.rows, past.slots, strict=True) if row.row_id not in held
    )
    assert joined == held[0][0]  # the slot the finished row freed
    for old, new in zip(before, past.buffers, strict=True):
        for slot, length in held.values():
            if slot != joined:  # a staying row's columns were neither moved nor rewritten
                torch.testing.assert_close(new[slot, :, :length], old[slot, :, :length], rtol=0, atol=0)


def test_a_decode_step_writes_one_column_per_row_and_nothing_else(gpt2):
    model, _ = gpt2
    backend = TorchBackend(model, cache="inplace")
    from lmfast.generation.backend import left_padded

    ids, mask, positions = left_padded([[5, 6, 7, 8], [9, 10]])
    _, past = backend.forward(ids, mask, positions, None)
    assert past.lengths.tolist() == [4, 2]
    before = [b.clone() for b in past.buffers]
    mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    _, after = backend.forward(np.array([[11], [12]]), mask, np.array([[4], [2]]), past)
    assert after is past and after.lengths.tolist() == [5, 3]
    for old, new in zip(before, after.buffers, strict=True):
        changed = (old != new).any(dim=(1, 3))  # (slot, column)
        assert changed.nonzero().tolist() == [[0, 4], [1, 2]]


def test_device_sampling_draws_what_the_host_sampler_draws_from_the_same_uniforms():
    """Full softmax, top-k, top-p and both, temperature-scaled: the device's inverse-CDF pick equals
    NumPy's `sample` for the same uniform, but where float rounding of the cumulative sums moves a
    boundary past the uniform (a tiny share of draws); greedy rows are exact."""
    generator = np.random.default_rng(0)
    vocab, draws = 500, 400
    temperature = np.array([0.9, 0.8, 1.0, 1.1, 0.0], dtype=np.float32)
    top_k = np.array([0, 20, 0, 40, 0])
    top_p = np.array([1.0, 1.0, 0.9, 0.8, 1.0], dtype=np.float32)
    sampling = np.flatnonzero(temperature > 0)
    mismatches = 0
    for _ in range(draws // len(sampling)):
        logits = (generator.standard_normal((len(temperature), vocab)) * 3).astype(np.float32)
        uniforms = generator.random(len(sampling))
        expected = logits.argmax(axis=1)
        expected[sampling] = sample(
            logits[sampling], temperature[sampling], top_k[sampling], top_p[sampling], uniforms
        )
        got = DeviceLogits(torch.from_numpy(logits)).next_tokens(
            vocab, sampling, temperature[sampling], top_k[sampling], top_p[sampling], uniforms
        )
        assert got[-1] == expected[-1]  # the greedy row
        mismatches += int((got != expected).sum())
    assert mismatches <= draws // 100, mismatches


def test_a_batch_of_default_sampling_rows_needs_no_logits_on_the_host(gpt2, prompts, run_to_end):
    """GenerationParams' defaults (temperature 0.7, top-k 50) sample on the device; the ids are
    in the vocabulary and seeded rows repeat themselves."""
    model, codec = gpt2
    params = GenerationParams(max_new_tokens=8, seed=7, ignore_eos=True)
    adds = {0: [(p, params) for p in prompts]}
    session = _session(model, codec, cache="inplace", device_sampling=True)
    first = run_to_end(session, adds)
    again = run_to_end(_session(model, codec, cache="inplace", device_sampling=True), adds)
    assert first == again and all(0 <= t < codec.vocab_size for ts in first.values() for t in ts)


def test_host_side_features_still_see_every_logit(gpt2, prompts, run_to_end):
    """A repetition penalty (or bans, bias, grammar, logprobs) needs the logits on the host: copied."""
    model, codec = gpt2
    params = GenerationParams(max_new_tokens=10, temperature=0.0, repetition_penalty=1.5, ignore_eos=True)
    adds = {0: [(prompts[0], params), (prompts[1], GREEDY)]}
    concat, inplace = _both(model, codec, lambda s: run_to_end(s, adds))
    assert concat == inplace


def test_a_sliding_window_model_keeps_the_concat_cache():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, sliding_window=8,
    )  # fmt: skip
    model = MistralForCausalLM(config)
    assert not TorchBackend(model, cache="auto").inplace
    with pytest.raises(ValueError, match="sliding window"):
        TorchBackend(model, cache="inplace")
