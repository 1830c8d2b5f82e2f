"""A failure in one request's prefill or one row's decoding ends only those rows; the session goes on."""

from __future__ import annotations

from lmfast.generation import GenerationParams
from lmfast.generation.session import admissible
from tests.generation.faults import POISON_STOP, poisoned_generator

GREEDY = GenerationParams(max_new_tokens=6, temperature=0.0)


def _drain(session, owners):
    texts, errors = {}, {}
    while len(session):
        for event in session.step():
            texts[event.row_id] = texts.get(event.row_id, "") + event.text
            if event.error is not None:
                errors[event.row_id] = event.error
    return {owners[r]: t for r, t in texts.items()}, {owners[r]: e for r, e in errors.items()}


def test_failed_prefill_ends_only_its_request(torch_generator):
    faulty, poison_prompt = poisoned_generator(torch_generator, " zebra")
    session = faulty.session(max_batch_size=8)
    owners = {}
    for name, prompt in (("a", "God is dead."), ("poison", poison_prompt), ("b", "Hello")):
        for row in session.add(prompt, GREEDY.replace(num_return_sequences=2)):
            owners[row] = name
    owners = {row: (name, i % 2) for i, (row, name) in enumerate(owners.items())}
    texts, errors = _drain(session, owners)
    assert set(errors) == {("poison", 0), ("poison", 1)}
    assert all("planted fault" in str(e) for e in errors.values())
    for name, prompt in (("a", "God is dead."), ("b", "Hello")):
        alone = torch_generator(prompt, params=GREEDY.replace(num_return_sequences=2))[0]
        assert [texts[(name, 0)], texts[(name, 1)]] == alone
    # the session still serves afterwards
    row = session.add("Hello", GREEDY)[0]
    texts, errors = _drain(session, {row: "again"})
    assert not errors and texts["again"] == torch_generator("Hello", params=GREEDY)[0][0]


def test_row_whose_text_fails_ends_alone_mid_batch(torch_generator):
    faulty, _ = poisoned_generator(torch_generator, " zebra")
    session = faulty.session(max_batch_size=8)
    owners = {session.add("God is dead.", GREEDY)[0]: "good"}
    session.step()  # the good row is running when the bad one joins
    owners[session.add("Hello", GREEDY.replace(stop=[POISON_STOP]))[0]] = "bad"
    texts, errors = _drain(session, owners)
    assert set(errors) == {"bad"}
    # the good row's text is the one it has alone: the failure beside it changed nothing
    full = torch_generator("God is dead.", params=GREEDY)[0][0]
    first = torch_generator("God is dead.", params=GREEDY.replace(max_new_tokens=1))[0][0]
    assert first + texts["good"] == full


def test_generator_call_raises_the_rows_error(torch_generator):
    faulty, poison_prompt = poisoned_generator(torch_generator, " zebra")
    try:
        faulty(poison_prompt, params=GREEDY)
    except RuntimeError as exc:
        assert "planted fault" in str(exc)
    else:
        raise AssertionError("the failed row was not reported")


def test_admission_rule_fcfs_and_oversized_alone():
    assert admissible([2, 2, 2], occupied=0, max_batch_size=5) == 2
    assert admissible([9, 1], occupied=0, max_batch_size=4) == 1  # oversized, alone into an empty batch
    assert admissible([9], occupied=1, max_batch_size=4) == 0  # waits for the batch to empty
    assert admissible([3, 1], occupied=2, max_batch_size=4) == 0  # first come first served: 1 waits too
