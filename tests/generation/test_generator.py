"""Generator and DecodeSession on the torch backend: parity with HF `generate`, batching
invariance, and the effect of every sampling parameter."""

from __future__ import annotations

import pytest

from lmfast.generation import GenerationParams

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0)


def _hf_greedy(generator, prompt: str, max_new_tokens: int) -> list[int]:
    import torch

    ids = torch.tensor([generator.codec.encode(prompt)])
    out = generator.backend.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, ids.shape[1] :].tolist()


def test_against_hf_generate_greedy_in_a_padded_batch(torch_generator, prompts, run_to_end):
    session = torch_generator.session()
    tokens = run_to_end(session, {0: [(p, GREEDY) for p in prompts]})
    for row_id, prompt in enumerate(prompts):
        assert tokens[row_id] == _hf_greedy(torch_generator, prompt, GREEDY.max_new_tokens), prompt


def test_greedy_is_identical_alone_and_joining_a_running_batch(torch_generator, prompts, run_to_end):
    alone = [run_to_end(torch_generator.session(), {0: [(p, GREEDY)]})[0] for p in prompts]
    # rows join at different steps, and the short ones leave early (cache trimmed meanwhile)
    short = GREEDY.replace(max_new_tokens=5)
    shared = run_to_end(
        torch_generator.session(),
        {
            0: [(prompts[0], GREEDY), (prompts[1], short)],
            3: [(prompts[2], GREEDY)],
            7: [(prompts[3], GREEDY)],
        },
    )
    assert shared[0] == alone[0]
    assert shared[1] == alone[1][:5]
    assert shared[2] == alone[2]
    assert shared[3] == alone[3]


def test_call_returns_continuations_without_the_prompt(torch_generator, prompts):
    texts = torch_generator(prompts[:2], max_new_tokens=8, temperature=0.0)
    assert len(texts) == 2 and all(len(t) == 1 for t in texts)
    expected = torch_generator.codec.decode(_hf_greedy(torch_generator, prompts[0], 8))
    assert texts[0][0] == expected
    assert not texts[0][0].startswith(prompts[0])


def test_stream_pieces_join_to_the_call_output(torch_generator, prompts):
    pieces = list(torch_generator.stream(prompts[0], max_new_tokens=12, temperature=0.0))
    assert len(pieces) > 1
    assert "".join(pieces) == torch_generator(prompts[0], max_new_tokens=12, temperature=0.0)[0][0]


def test_seeded_sampling_is_reproducible_and_batch_independent(torch_generator, prompts, run_to_end):
    params = GenerationParams(max_new_tokens=16, temperature=1.0, top_k=0, seed=123)
    first = torch_generator(prompts[0], params)
    assert torch_generator(prompts[0], params) == first
    # the same seeded row draws the same tokens when other rows share its batch
    tokens = run_to_end(
        torch_generator.session(), {0: [(prompts[1], params.replace(seed=5)), (prompts[0], params)]}
    )
    alone = run_to_end(torch_generator.session(), {0: [(prompts[0], params)]})
    assert tokens[1] == alone[0]
    assert torch_generator(prompts[0], params.replace(seed=124)) != first


def test_num_return_sequences_gives_distinct_samples(torch_generator, prompts):
    texts = torch_generator(
        prompts[:2], max_new_tokens=10, temperature=1.0, top_k=0, num_return_sequences=3, seed=0
    )
    assert [len(t) for t in texts] == [3, 3]
    assert len(set(texts[0])) == 3
    # sequence 0 of a seeded request equals a single-sequence request with that seed
    assert (
        texts[0][0] == torch_generator(prompts[0], max_new_tokens=10, temperature=1.0, top_k=0, seed=0)[0][0]
    )


def test_max_new_tokens_bounds_the_output(torch_generator, prompts, run_to_end):
    tokens = run_to_end(torch_generator.session(), {0: [(prompts[0], GREEDY.replace(max_new_tokens=7))]})
    assert len(tokens[0]) == 7


def test_temperature_zero_is_greedy_and_high_temperature_spreads(torch_generator, prompts):
    greedy = torch_generator(prompts[0], max_new_tokens=10, temperature=0.0)
    assert torch_generator(prompts[0], max_new_tokens=10, temperature=0.0, seed=9) == greedy
    # top_k=1 leaves only the argmax whatever the temperature
    assert torch_generator(prompts[0], max_new_tokens=10, temperature=5.0, top_k=1, seed=1) == greedy
    hot = torch_generator(
        prompts[0], max_new_tokens=10, temperature=5.0, top_k=0, num_return_sequences=4, seed=1
    )
    assert all(text != greedy[0] for text in hot[0])


def test_top_p_tiny_keeps_only_the_top_token(torch_generator, prompts):
    greedy = torch_generator(prompts[1], max_new_tokens=10, temperature=0.0)
    assert (
        torch_generator(prompts[1], max_new_tokens=10, temperature=3.0, top_k=0, top_p=1e-6, seed=4) == greedy
    )


def test_repetition_penalty_avoids_repeating_tokens(tiny_model_dir, prompts, run_to_end):
    from lmfast.generation import Generator

    # the default-init tiny model repeats one token greedily; the penalty breaks the loop
    generator = Generator.load(tiny_model_dir, backend="torch")
    plain = run_to_end(generator.session(), {0: [(prompts[0], GREEDY.replace(max_new_tokens=12))]})[0]
    penalized = run_to_end(
        generator.session(), {0: [(prompts[0], GREEDY.replace(max_new_tokens=12, repetition_penalty=100.0))]}
    )[0]
    assert len(set(plain)) < len(plain)
    assert len(set(penalized)) == len(penalized)


def test_banned_words_never_appear_in_any_form(torch_generator, prompts, run_to_end):
    plain = run_to_end(torch_generator.session(), {0: [(prompts[0], GREEDY)]})[0]
    word = torch_generator.codec.decode([plain[0]]).strip()
    banned_params = GREEDY.replace(banned_words=[word])
    banned_ids = set(torch_generator.codec.banned_ids([word]).tolist())
    assert plain[0] in banned_ids
    tokens = run_to_end(torch_generator.session(), {0: [(prompts[0], banned_params)]})[0]
    assert not banned_ids & set(tokens)


def test_stop_sequence_cuts_the_text_and_ends_the_row(torch_generator, prompts):
    full = torch_generator(prompts[2], max_new_tokens=20, temperature=0.0)[0][0]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = torch_generator(prompts[2], max_new_tokens=20, temperature=0.0, stop=[stop])[0][0]
    assert cut == full[: full.index(stop)]
    streamed = "".join(torch_generator.stream(prompts[2], max_new_tokens=20, temperature=0.0, stop=[stop]))
    assert streamed == cut


def test_events_report_finish_reasons(torch_generator, prompts):
    session = torch_generator.session()
    [row] = session.add(prompts[0], GREEDY.replace(max_new_tokens=3))
    events = [e for _ in range(3) for e in session.step()]
    assert [e.finished for e in events] == [False, False, True]
    assert events[-1].finish_reason == "length" and events[-1].row_id == row
    assert len(session) == 0 and session.step() == []


def test_eos_token_ends_the_row(torch_generator, prompts):
    import dataclasses

    from lmfast.generation import DecodeSession

    # make the model's first greedy token the end-of-sequence token
    first = run_first_token(torch_generator, prompts[0])
    info = dataclasses.replace(torch_generator.info, eos_token_ids=(first,))
    session = DecodeSession(torch_generator.backend, torch_generator.codec, info)
    session.add(prompts[0], GREEDY)
    [event] = session.step()
    assert event.finished and event.finish_reason == "eos" and event.text == ""


def run_first_token(generator, prompt: str) -> int:
    session = generator.session()
    session.add(prompt, GREEDY)
    return session.step()[0].token_id


def test_cancel_and_max_batch_size_queue(torch_generator, prompts):
    session = torch_generator.session(max_batch_size=2)
    rows = [r for p in prompts[:3] for r in session.add(p, GREEDY)]
    events = session.step()
    assert {e.row_id for e in events} == set(rows[:2])  # the third waits for room
    assert len(session) == 3 and session.num_running == 2
    session.cancel(rows[0])
    assert len(session) == 2
    events = session.step()
    assert {e.row_id for e in events} == {rows[1], rows[2]}


def test_context_overflow_and_bad_params_raise_value_error(torch_generator):
    too_long = "word " * (torch_generator.max_context + 5)
    with pytest.raises(ValueError, match="context"):
        torch_generator(too_long, max_new_tokens=4)
    with pytest.raises(ValueError, match="top_p"):
        torch_generator("hi", top_p=0.0)
    with pytest.raises(ValueError, match="unknown generation parameter"):
        torch_generator("hi", temprature=0.5)


def test_generation_stops_at_the_context_end(torch_generator, run_to_end):
    prompt_ids = torch_generator.codec.encode("word " * 200)[: torch_generator.max_context - 3]
    session = torch_generator.session()
    session.add_token_ids(prompt_ids, GREEDY.replace(max_new_tokens=50))
    events = [e for _ in range(3) for e in session.step()]
    assert events[-1].finish_reason == "length" and len(events) == 3


def test_loads_an_experiment_dir_through_its_hf_subdir(varied_model_dir, tmp_path):
    from lmfast.generation import Generator

    experiment = tmp_path / "nietzsche" / "0"
    experiment.mkdir(parents=True)
    (experiment / "hf").symlink_to(varied_model_dir, target_is_directory=True)
    generator = Generator.load(experiment)
    assert generator.backend.name == "torch" and generator.max_context == 128
    assert generator.model_name == "nietzsche/0"
    assert generator.count_tokens("Hello world") == 2


def test_load_rejects_what_is_not_a_model(tmp_path):
    from lmfast.generation import Generator

    with pytest.raises(ValueError, match="not a model directory"):
        Generator.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        Generator.load(tmp_path / "missing")


def test_a_finishing_row_frees_its_place_in_the_same_step(torch_generator, prompts):
    session = torch_generator.session(max_batch_size=1)
    [first] = session.add(prompts[0], GREEDY.replace(max_new_tokens=2))
    [second] = session.add(prompts[1], GREEDY)
    assert [e.row_id for e in session.step()] == [first]
    events = session.step()
    assert [(e.row_id, e.finished) for e in events] == [(first, True), (second, False)]
