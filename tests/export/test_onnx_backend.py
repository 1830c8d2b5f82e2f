"""The ONNX Runtime backend against the torch backend, through the same DecodeSession."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lmfast.generation import GenerationParams, Generator

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def generators(varied_model_dir, onnx_dir):
    return Generator.load(varied_model_dir, num_threads=2), Generator.load(onnx_dir, num_threads=2)


def _tokens(session, adds):
    tokens, step = {}, 0
    while len(session) or any(s >= step for s in adds):
        for prompt, params in adds.get(step, []):
            for row in session.add(prompt, params):
                tokens[row] = []
        for event in session.step():
            tokens[event.row_id].append(event.token_id)
        step += 1
    return tokens


def test_auto_backend_picks_onnx_for_an_export_dir(generators):
    assert [g.backend.name for g in generators] == ["torch", "onnx"]


def test_against_torch_greedy_tokens_in_padded_batches(generators, prompts):
    # rows of different lengths, some joining the running batch later, one leaving early
    adds = {
        0: [(prompts[0], GREEDY), (prompts[1], GREEDY.replace(max_new_tokens=6))],
        2: [(prompts[2], GREEDY)],
        5: [(prompts[3], GREEDY)],
    }
    torch_tokens, onnx_tokens = (_tokens(g.session(), adds) for g in generators)
    assert torch_tokens == onnx_tokens
    assert len(set(onnx_tokens[0])) > 5  # a varied sequence, not one token repeated


def test_cache_replaced_mid_generation_is_bound_again(generators, prompts, monkeypatch):
    # the backend keeps the cache bound between steps; with a 16-token capacity step the buffers
    # are replaced by larger ones several times (and by new ones as rows join and leave), and each
    # replacement must reach the session, or a step writes into freed memory
    from lmfast.generation import slot_cache

    monkeypatch.setattr(slot_cache, "CAPACITY_STEP", 16)
    adds = {
        0: [(prompts[0], GREEDY.replace(max_new_tokens=40)), (prompts[1], GREEDY.replace(max_new_tokens=9))],
        3: [(prompts[3], GREEDY.replace(max_new_tokens=30))],
    }
    torch_tokens, onnx_tokens = (_tokens(g.session(), adds) for g in generators)
    assert torch_tokens == onnx_tokens
    assert [len(t) for t in onnx_tokens.values()] == [40, 9, 30]


def test_against_torch_logits_of_a_left_padded_prompt(generators, prompts):
    ids = [generators[0].codec.encode(p) for p in prompts[:2]]
    length = max(map(len, ids))
    input_ids = np.zeros((2, length), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, length - len(row) :], mask[i, length - len(row) :] = row, 1
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    (torch_logits, _), (onnx_logits, _) = (
        g.backend.forward(input_ids, mask, positions, None) for g in generators
    )
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-3)


def test_seeded_sampling_is_reproducible_on_onnx(generators, prompts):
    onnx = generators[1]
    params = GenerationParams(max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.95, seed=11)
    first = onnx(prompts[:2], params, num_return_sequences=2)
    assert onnx(prompts[:2], params, num_return_sequences=2) == first
    assert first[0][0] != first[0][1]


def test_stream_and_call_agree_on_onnx(generators, prompts):
    onnx = generators[1]
    assert (
        "".join(onnx.stream(prompts[0], max_new_tokens=10, temperature=0.0))
        == onnx(prompts[0], max_new_tokens=10, temperature=0.0)[0][0]
    )


def test_prompt_longer_than_the_context_is_refused(generators):
    with pytest.raises(ValueError, match="context"):
        generators[1]("word " * 200, max_new_tokens=2)


def test_export_dir_loads_and_generates_without_torch_or_transformers(onnx_dir):
    code = (
        "import sys\n"
        "from lmfast.generation import Generator\n"
        f"g = Generator.load({str(onnx_dir)!r}, num_threads=1)\n"
        "out = g(['Truth is', 'God'], max_new_tokens=5, temperature=0.0)\n"
        "assert len(out) == 2 and all(out[i][0] for i in range(2)), out\n"
        "for name in ('torch', 'transformers'):\n"
        "    assert name not in sys.modules, name + ' imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_generate_cli_on_an_export_dir(onnx_dir, capsys):
    from lmfast.generation.cli import main

    assert (
        main([str(onnx_dir), "--prompt", "Truth is", "--max_new_tokens", "4", "--temperature", "0", "--json"])
        == 0
    )
    import json

    texts = json.loads(capsys.readouterr().out)["texts"]
    assert len(texts) == 1 and len(texts[0]) == 1 and texts[0][0]
    assert main([str(onnx_dir), "--prompt", "x", "--top_k", "-3"]) == 2
    assert "top_k" in capsys.readouterr().err
