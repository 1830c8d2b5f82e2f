"""Prompt and generated logprobs equal transformers' log_softmax of the same weights (fp32), on a
left-padded batch, through the one decode loop on the torch and the ONNX backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmfast.generation import Generator
from lmfast.generation.params import GenerationParams

PROMPTS = [[464, 3290, 318, 257, 1310, 11, 290], [40, 1101]]  # 7 and 2 tokens: the second is padded
TOP = 3


def _decode(generator: Generator, params: GenerationParams) -> list[dict]:
    session = generator.session()
    rows = [session.add_token_ids(list(p), params)[0] for p in PROMPTS]
    out = {row: {"prompt": None, "tokens": [], "logprobs": []} for row in rows}
    while len(session):
        for event in session.step():
            assert event.error is None
            entry = out[event.row_id]
            if event.prompt_logprobs is not None:
                entry["prompt"] = event.prompt_logprobs
            entry["tokens"].append(event.token_id)
            entry["logprobs"].append(event.logprob)
    return [out[row] for row in rows]


def _reference(model_dir: Path, ids: list[int]) -> np.ndarray:
    """log_softmax of transformers' logits over the whole sequence, alone (no padding)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits, dim=-1).numpy()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_prompt_and_generated_logprobs_equal_transformers(
    backend: str, varied_model_dir: Path, onnx_dir: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generator = Generator.load(onnx_dir if backend == "onnx" else varied_model_dir, num_threads=1)
    # greedy: logprobs are the model's own distribution; a repetition penalty would change them
    params = GenerationParams(max_new_tokens=4, temperature=0.0, logprobs=TOP, prompt_logprobs=TOP)
    for prompt, result in zip(PROMPTS, _decode(generator, params), strict=True):
        sequence = prompt + result["tokens"]
        reference = _reference(varied_model_dir, sequence)
        entries = [*result["prompt"], *result["logprobs"]]
        assert len(entries) == len(sequence) and entries[0] is None
        for position, entry in enumerate(entries[1:], start=1):
            expected = reference[position - 1]
            assert entry.token_id == sequence[position]
            np.testing.assert_allclose(entry.logprob, expected[sequence[position]], atol=2e-4)
            top_ids = [t for t, _ in entry.top]
            assert len(top_ids) == TOP
            np.testing.assert_allclose([v for _, v in entry.top], np.sort(expected)[::-1][:TOP], atol=2e-4)
            np.testing.assert_allclose(expected[top_ids], [v for _, v in entry.top], atol=2e-4)
        # greedy: every generated token is the top alternative of its position
        assert all(e.token_id == e.top[0][0] for e in result["logprobs"])


def test_logprobs_follow_the_distribution_sampled_from(varied_model_dir: Path) -> None:
    """With temperature and logit_bias, a generated token's logprob is that of the processed
    distribution (vLLM's processed logprobs): log_softmax((logits + bias) / temperature)."""
    generator = Generator.load(varied_model_dir, backend="torch", num_threads=1)
    bias = {13: 5.0, 198: -3.0}
    params = GenerationParams(max_new_tokens=3, temperature=0.5, seed=3, logprobs=2, logit_bias=bias)
    result = _decode(generator, params)[1]
    sequence = PROMPTS[1] + result["tokens"]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].numpy()
    for step, entry in enumerate(result["logprobs"]):
        row = logits[len(PROMPTS[1]) - 1 + step].copy()
        for token, value in bias.items():
            row[token] += value
        expected = torch.log_softmax(torch.from_numpy(row / 0.5), dim=-1).numpy()
        np.testing.assert_allclose(entry.logprob, expected[entry.token_id], atol=2e-4)


def test_scored_prompts_are_prefilled_in_chunks_within_the_logits_bound_with_the_same_numbers(
    varied_model_dir: Path, monkeypatch
) -> None:
    from lmfast.generation import session as session_module

    generator = Generator.load(varied_model_dir, backend="torch", num_threads=1)
    params = GenerationParams(max_new_tokens=2, temperature=0.0, logprobs=1, prompt_logprobs=1)
    together = _decode(generator, params)
    calls = []
    forward = generator.backend.forward

    def counting(input_ids, *args, **kwargs):
        calls.append(input_ids.shape)
        return forward(input_ids, *args, **kwargs)

    # a chunk's all-position logits may hold 3 positions: the 7-token prompt runs as 3 + 3 + 1
    monkeypatch.setattr(session_module, "PROMPT_LOGITS_BYTES", 3 * 4 * generator.codec.vocab_size)
    monkeypatch.setattr(generator.backend, "forward", counting)
    apart = _decode(generator, params)
    prompt_calls = [shape for shape in calls if shape[1] > 1]
    assert max(t for _, t in prompt_calls) == 3  # chunks within the bound
    assert all(b == 1 for b, _ in prompt_calls)  # one scored prompt at a time, no padding
    assert sum(t for _, t in calls) >= sum(len(p) for p in PROMPTS)  # every prompt token computed
    for a, b in zip(together, apart, strict=True):
        assert a["tokens"] == b["tokens"]
        assert len(a["prompt"]) == len(b["prompt"])
        np.testing.assert_allclose(
            [e.logprob for e in a["prompt"][1:]], [e.logprob for e in b["prompt"][1:]], atol=1e-5
        )
