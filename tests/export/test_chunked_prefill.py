"""Chunked prefill and the prefix cache change when prompt tokens are computed, never what is
generated: greedy tokens equal a whole-prompt prefill on the torch and the ONNX (in-place cache)
backends, with padded batches and rows joining and leaving while a prompt is prefilled in chunks.
The scheduling itself is checked by counting steps and forwards, never by timing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmfast.generation import GenerationParams, Generator
from lmfast.generation.prefix_cache import PrefixCache

GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def generators(varied_model_dir, onnx_dir):
    return {
        "torch": Generator.load(varied_model_dir, num_threads=1),
        "onnx": Generator.load(onnx_dir, num_threads=1),
    }


def _run(session, adds: dict[int, list[tuple[list[int], GenerationParams]]]) -> dict[int, list[int]]:
    """Step until empty, adding (prompt ids, params) at the given steps; tokens per row id."""
    tokens: dict[int, list[int]] = {}
    step = 0
    while len(session) or any(s >= step for s in adds):
        for prompt_ids, params in adds.get(step, []):
            for row in session.add_token_ids(list(prompt_ids), params):
                tokens[row] = []
        for event in session.step():
            assert event.error is None, event.error
            tokens[event.row_id].append(event.token_id)
        step += 1
    return tokens


def _schedule(
    generator: Generator, prompts: list[str]
) -> dict[int, list[tuple[list[int], GenerationParams]]]:
    """Rows of different lengths joining at different steps, one leaving early, n > 1, and two
    'next turns': a finished sequence (prompt + reply) continued by new ids, and a repeated prompt."""
    ids = [generator.codec.encode(p) for p in prompts]
    first = _run(generator.session(), {0: [(ids[2], GREEDY)]})[0]
    next_turn = ids[2] + first[:-1] + ids[0]  # what a chat client sends after that reply
    return {
        0: [(ids[2], GREEDY), (ids[1], GREEDY.replace(max_new_tokens=3))],
        1: [(ids[0] * 3, GREEDY.replace(num_return_sequences=2))],  # a long prompt: several chunks
        4: [(ids[3], GREEDY)],
        16: [(next_turn, GREEDY), (ids[0] * 3, GREEDY)],
    }


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_greedy_tokens_equal_with_chunks_and_the_prefix_cache_on_or_off(generators, prompts, backend):
    generator = generators[backend]
    adds = _schedule(generator, prompts)
    whole = _run(generator.session(), adds)
    sessions = {
        "chunked": generator.session(step_token_budget=5),
        "cached": generator.session(prefix_cache=PrefixCache(2**30)),
        "chunked+cached": generator.session(step_token_budget=5, prefix_cache=PrefixCache(2**30)),
    }
    for name, session in sessions.items():
        assert _run(session, adds) == whole, name
    plain = generator.session()
    _run(plain, adds)
    assert sessions["chunked"].prefill_chunks > plain.prefill_chunks  # prompts were cut into chunks
    for name in ("cached", "chunked+cached"):
        cache = sessions[name].prefix_cache
        assert cache.hits >= 2, name  # the next turn and the repeated prompt
        assert cache.reused_tokens >= len(adds[16][0][0]) - len(generator.codec.encode(prompts[0])) - 1


def test_a_running_row_advances_every_step_while_a_long_prompt_is_prefilled_in_chunks(generators, prompts):
    generator = generators["torch"]
    budget = 7
    session = generator.session(step_token_budget=budget)
    (running,) = session.add_token_ids(generator.codec.encode(prompts[1]), GREEDY.replace(max_new_tokens=60))
    session.step()  # prefilled whole: nobody else was decoding
    long_prompt = generator.codec.encode(prompts[2]) * 4
    (joining,) = session.add_token_ids(long_prompt, GREEDY.replace(max_new_tokens=2))
    chunks = math.ceil(len(long_prompt) / budget)
    first_token_step = None
    for step in range(chunks + 1):
        before = session.prefill_chunks
        events = {event.row_id: event for event in session.step()}
        assert running in events  # the running row never waits for the prompt
        assert session.prefill_chunks == before + 1  # one chunk per step, within the budget
        if joining in events:
            first_token_step = step
            break
    assert first_token_step == chunks - 1  # the prompt's first token after exactly its k chunks


def test_cancelling_a_row_mid_prefill_drops_its_prompt_and_frees_its_place(generators, prompts):
    generator = generators["onnx"]
    session = generator.session(max_batch_size=2, step_token_budget=4, prefix_cache=PrefixCache(2**30))
    (running,) = session.add_token_ids(generator.codec.encode(prompts[1]), GREEDY.replace(max_new_tokens=40))
    session.step()
    (long_row,) = session.add_token_ids(generator.codec.encode(prompts[2]) * 4, GREEDY)
    session.step()
    session.step()
    assert session.num_prefilling == 1 and len(session) == 2
    session.cancel(long_row)
    assert session.num_prefilling == 0 and len(session) == 1
    (waiting,) = session.add_token_ids(generator.codec.encode(prompts[3]), GREEDY.replace(max_new_tokens=2))
    produced = {event.row_id for _ in range(4) for event in session.step()}
    assert long_row not in produced and {running, waiting} <= produced  # the freed place is reused


def test_a_tiny_pool_evicts_but_never_changes_tokens(generators, prompts):
    generator = generators["onnx"]
    ids = [generator.codec.encode(p) * 2 for p in prompts[:3]]
    adds = {3 * i: [(prompt, GREEDY)] for i, prompt in enumerate(ids)} | {12: [(ids[0], GREEDY)]}
    whole = _run(generator.session(), adds)
    probe = generator.session(prefix_cache=PrefixCache(2**30))
    _run(probe, {0: [(ids[0], GREEDY)]})
    one_entry = probe.prefix_cache.bytes  # ids[0] + its reply
    cache = PrefixCache(int(one_entry * 1.5))
    assert _run(generator.session(prefix_cache=cache), adds) == whole
    assert 1 <= len(cache) and cache.bytes <= cache.capacity_bytes
    np.testing.assert_array_less(0, cache.lookups)


def test_the_stall_bound_sizes_chunks_from_measured_decode_and_prefill_times(generators, prompts):
    generator = generators["torch"]
    session = generator.session(step_token_budget=64, stall_ratio=1.5)
    (running,) = session.add_token_ids(generator.codec.encode(prompts[1]), GREEDY.replace(max_new_tokens=40))
    session.step()  # prefilled alone (the idle budget): its time per token is now measured
    assert session._step_budget() == 8  # no decode measured yet: the cautious minimum
    session.step()  # one decode forward measured
    session._decode_seconds, session._prefill_seconds_per_token = 0.030, 0.002  # as if measured
    assert session._step_budget() == 22  # 1.5 x 30 ms of decode / 2 ms per prompt token
    session._prefill_seconds_per_token = 0.1
    assert session._step_budget() == 8  # never below the minimum: a long prompt still advances
    session._prefill_seconds_per_token = 0.0001
    assert session._step_budget() == 64  # never above the token budget
    plain = generator.session(step_token_budget=64)
    assert plain._step_budget() == max(64, 1024)  # nobody decoding: the idle budget
    long_prompt = generator.codec.encode(prompts[2]) * 4
    (joining,) = session.add_token_ids(long_prompt, GREEDY.replace(max_new_tokens=2))
    steps = 0
    while True:  # real timings from here on: the running row still advances on every step
        events = {event.row_id for event in session.step()}
        assert running in events
        steps += 1
        if joining in events:
            break
    assert steps >= 2  # the long prompt came in chunks
