"""Fresh prompts prefilled together are cut into groups of similar length (`length_groups`), so a
group's left padding costs less than another forward would."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from lmfast.generation import GenerationParams
from lmfast.generation.session import SPLIT_FORWARD_ROWS, length_groups


def _cost(lengths: list[int], groups: list[list[int]], fixed_rows: float) -> float:
    return sum(fixed_rows + len(g) * max(lengths[i] for i in g) for g in groups)


def _partitions(items: list[int]):
    """Every way to cut `items` into non-empty groups (a brute-force reference for small inputs)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield partition[:i] + [[first, *partition[i]]] + partition[i + 1 :]


@given(
    lengths=st.lists(st.integers(1, 40), max_size=7),
    fixed_rows=st.sampled_from([0.5, 2.0, SPLIT_FORWARD_ROWS, 40.0]),
)
def test_length_groups_partition_the_prompts_at_the_least_cost(lengths, fixed_rows):
    groups = length_groups(lengths, fixed_rows)
    assert sorted(itertools.chain.from_iterable(groups)) == list(range(len(lengths)))
    assert all(g == sorted(g) and g for g in groups)  # arrival order within a group
    assert groups == sorted(groups)  # the group holding the earliest arrival first
    best = min(_cost(lengths, p, fixed_rows) for p in _partitions(list(range(len(lengths)))))
    assert _cost(lengths, groups, fixed_rows) == best


@given(length=st.integers(1, 100), count=st.integers(1, 40))
def test_prompts_of_one_length_stay_one_group(length, count):
    assert length_groups([length] * count) == [list(range(count))]


def test_the_serving_benchmark_prompts_save_a_third_of_the_rows():
    lengths = [2, 5, 4, 5, 5, 5, 6, 6, 8, 5, 7, 2] * 3  # bench_serve's prompts, 36 clients
    groups = length_groups(lengths)
    computed = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert len(groups) > 1 and computed < 0.7 * len(lengths) * max(lengths)


def test_a_short_and_a_long_prompt_are_prefilled_apart_with_the_same_tokens(torch_generator, run_to_end):
    """Two fresh prompts joining in one step: one forward each (no 39 padding rows), and each
    row's greedy tokens are those it gets alone."""
    greedy = GenerationParams(max_new_tokens=6, temperature=0.0)
    short, long = "a", " ".join(["word"] * 40)
    alone = [run_to_end(torch_generator.session(), {0: [(p, greedy)]})[0] for p in (short, long)]
    session = torch_generator.session()
    together = run_to_end(session, {0: [(short, greedy), (long, greedy)]})
    assert session.prefill_chunks == 2
    assert [together[0], together[1]] == alone
