"""/v1/completions as lm-evaluation-harness and the official `openai` client use it: token-id
prompts, logprobs, echo, scoring with max_tokens 0, and vLLM's sampling extensions, against a real
uvicorn server; the numbers are checked against transformers' log_softmax of the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread

EOS = 50256
PROMPTS = [[464, 3290, 318, 257, 1310], [40, 1101, 257]]  # different lengths: a padded batch


@pytest.fixture(scope="module")
def api(generator: Any, tiny_model_dir: Path) -> Iterator[openai.OpenAI]:
    config = ServeConfig(model=str(tiny_model_dir), max_batch_size=8)
    with ServerThread(create_app(config, generator=generator)) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _log_softmax(model_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1).numpy()


def test_echo_logprobs_of_token_prompts_equal_transformers(api, tiny_model_dir, generator, monkeypatch):
    """lm-eval's loglikelihood request: prompt ids, max_tokens 1, logprobs 1, echo, temperature 0."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answer = api.completions.create(
        model="m", prompt=PROMPTS, max_tokens=1, logprobs=2, echo=True, temperature=0, seed=1234
    )
    tokenizer = generator.codec.tokenizer
    assert [c.index for c in answer.choices] == [0, 1]
    for prompt, choice in zip(PROMPTS, answer.choices, strict=True):
        logprobs = choice.logprobs
        assert len(logprobs.tokens) == len(prompt) + 1
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        assert "".join(logprobs.tokens) == choice.text  # echo: the prompt, then the new token
        assert logprobs.text_offset == list(np.cumsum([0] + [len(t) for t in logprobs.tokens[:-1]]))
        ids = prompt + [tokenizer.encode(choice.text[len(tokenizer.decode(prompt)) :]).ids[0]]
        reference = _log_softmax(tiny_model_dir, ids)
        expected = [reference[i - 1, ids[i]] for i in range(1, len(ids))]
        np.testing.assert_allclose(logprobs.token_logprobs[1:], expected, atol=1e-4)
        for position, top in enumerate(logprobs.top_logprobs[1:], start=1):
            best = np.sort(reference[position - 1])[::-1][:2]
            # the 2 asked-for alternatives, plus the token itself where it is not among them
            assert len(top) in (2, 3)
            np.testing.assert_allclose(sorted(top.values(), reverse=True)[:2], best, atol=1e-4)
        # greedy: the generated token is the most likely one (lm-eval's is_greedy)
        assert logprobs.token_logprobs[-1] == pytest.approx(max(logprobs.top_logprobs[-1].values()))
    assert answer.usage.prompt_tokens == sum(map(len, PROMPTS)) and answer.usage.completion_tokens == 2


def test_max_tokens_0_with_echo_scores_the_prompt_only(api):
    answer = api.completions.create(model="m", prompt="God is dead", max_tokens=0, echo=True, logprobs=0)
    choice = answer.choices[0]
    assert choice.text == "God is dead" and choice.finish_reason == "length"
    assert choice.logprobs.tokens == ["God", " is", " dead"]
    assert choice.logprobs.token_logprobs[0] is None and all(
        v < 0 for v in choice.logprobs.token_logprobs[1:]
    )
    # logprobs 0: no alternatives, only the token itself (as vLLM)
    assert [list(t) for t in choice.logprobs.top_logprobs[1:]] == [[" is"], [" dead"]]
    assert answer.usage.completion_tokens == 0
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        api.completions.create(model="m", prompt="x", max_tokens=0)
    assert _field(refused.value) == "max_tokens"
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        api.completions.create(model="m", prompt="x", suffix="y")
    assert _field(refused.value) == "suffix"


def _field(error: openai.APIStatusError) -> str:
    """The body field a 422 names."""
    return error.response.json()["detail"][0]["loc"][1]


def test_generated_logprobs_without_echo(api):
    choice = api.completions.create(model="m", prompt="Truth is", max_tokens=3, logprobs=1, temperature=0)
    choice = choice.choices[0]
    assert len(choice.logprobs.tokens) == 3 and "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset[0] == 0 and all(v is not None for v in choice.logprobs.token_logprobs)


def test_ignore_eos_min_tokens_stop_token_ids_and_logit_bias(api):
    """A bias of +100 makes EOS (or token 13, '.') the greedy choice at every step."""

    def complete(**extra: Any) -> Any:
        answer = api.completions.create(
            model="m", prompt="Truth is", max_tokens=4, temperature=0, extra_body=extra
        )
        return answer.choices[0], answer.usage.completion_tokens

    choice, tokens = complete(logit_bias={str(EOS): 100})
    assert (choice.finish_reason, tokens, choice.text) == ("stop", 1, "")
    choice, tokens = complete(logit_bias={str(EOS): 100}, ignore_eos=True)
    assert (choice.finish_reason, tokens) == ("length", 4)
    # EOS is held back for 2 tokens, then drawn
    choice, tokens = complete(logit_bias={str(EOS): 100}, min_tokens=2)
    assert (choice.finish_reason, tokens) == ("stop", 3)
    choice, tokens = complete(logit_bias={"13": 100})
    assert (choice.finish_reason, tokens, choice.text) == ("length", 4, "....")
    choice, tokens = complete(logit_bias={"13": 100}, stop_token_ids=[13])
    assert (choice.finish_reason, tokens, choice.text) == ("stop", 1, "")
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        complete(logit_bias={"13": 101})
    assert _field(refused.value) == "logit_bias"
