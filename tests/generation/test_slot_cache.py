"""The in-place cache's buffer operations (lmfast.generation.slot_cache), on NumPy alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.generation.slot_cache import CAPACITY_STEP, SlotCache, left_aligned, right_aligned


def _filled(lengths: list[int], layers: int = 2, capacity_tokens: int = 1) -> SlotCache:
    """A cache whose row r, column t of every buffer holds 1000 * r + t (+ 0.5 for values)."""
    cache = SlotCache.empty(len(lengths), layers, 2, 3, max([capacity_tokens, *lengths]), np.float32)
    for i, buffer in enumerate(cache.buffers):
        for row, n in enumerate(lengths):
            buffer[row, :, :n] = (1000 * row + np.arange(n) + 0.5 * (i % 2))[None, :, None]
    cache.lengths = np.array(lengths, dtype=np.int64)
    return cache


def _held(cache: SlotCache) -> list[list[np.ndarray]]:
    """Per buffer, each row's held columns, read from the row's slot."""
    return [
        [b[slot, :, :n] for slot, n in zip(cache.slots.tolist(), cache.lengths.tolist(), strict=True)]
        for b in cache.buffers
    ]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=5), st.integers(7, 9))
def test_alignment_moves_each_rows_real_columns_and_back(counts, width):
    rng = np.random.default_rng(len(counts) * width)
    array = rng.integers(0, 100, size=(len(counts), width, 2))
    counts = np.array(counts)
    right = right_aligned(array, counts)
    for row, n in enumerate(counts.tolist()):
        np.testing.assert_array_equal(right[row, :n], array[row, width - n :])  # real columns first
    np.testing.assert_array_equal(left_aligned(right, counts), array)


def test_select_merge_and_fit_keep_every_rows_held_columns():
    cache = _filled([3, 1, 5])
    assert cache.capacity == CAPACITY_STEP and cache.capacity % CAPACITY_STEP == 0
    picked = cache.select(np.array([2, 0, 0]))  # reorder and repeat (num_return_sequences)
    assert picked.lengths.tolist() == [5, 3, 3]
    for got, want in zip(_held(picked), _held(cache), strict=True):
        np.testing.assert_array_equal(got[0], want[2])
        np.testing.assert_array_equal(got[1], want[0])
        np.testing.assert_array_equal(got[2], want[0])
    big = _filled([CAPACITY_STEP + 10], capacity_tokens=CAPACITY_STEP + 10)  # a larger capacity
    merged = cache.merge(big)
    assert merged.capacity == big.capacity and merged.lengths.tolist() == [3, 1, 5, CAPACITY_STEP + 10]
    for got, first, second in zip(_held(merged), _held(cache), _held(big), strict=True):
        for a, b in zip(got, first + second, strict=True):
            np.testing.assert_array_equal(a, b)
    assert cache.fit(CAPACITY_STEP) is cache  # room enough: no copy
    grown = cache.fit(CAPACITY_STEP + 1)
    assert grown.capacity >= 1.5 * cache.capacity and grown.capacity % CAPACITY_STEP == 0
    for got, want in zip(_held(grown), _held(cache), strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_rows_leaving_and_joining_copy_no_other_rows_buffers():
    cache = _filled([3, 1, 5, 2])
    left = cache.select(np.array([0, 2]))  # rows 1 and 3 leave: their slots are freed
    assert left.buffers is cache.buffers and left.slots.tolist() == [0, 2]
    joined = left.merge(_filled([4]))  # a newcomer takes the lowest free slot
    assert joined.buffers is cache.buffers and joined.slots.tolist() == [0, 2, 1]
    for got, want in zip(_held(joined)[0], [*_held(cache)[0][::2], _held(_filled([4]))[0][0]], strict=True):
        np.testing.assert_array_equal(got, want)
    crowded = joined.merge(_filled([2, 2]))  # one free slot for two rows: new, larger buffers
    assert (
        crowded.buffers is not cache.buffers
        and crowded.num_slots >= 5
        and crowded.slots.tolist() == [0, 1, 2, 3, 4]
    )


def test_few_rows_left_high_in_many_slots_move_down():
    cache = _filled([1] * 12)
    last = cache.select(np.array([11]))  # one row left, in slot 11 of 12: a step would run over 12
    assert last.buffers is cache.buffers and last.slots.tolist() == [0] and last.span == 1
    np.testing.assert_array_equal(_held(last)[0][0], _held(cache)[0][11])


operations = st.lists(
    st.one_of(
        st.tuples(st.just("leave"), st.lists(st.booleans(), min_size=8, max_size=8)),
        st.tuples(st.just("join"), st.lists(st.integers(1, 6), min_size=1, max_size=3)),
        st.tuples(st.just("grow"), st.integers(1, 2 * CAPACITY_STEP)),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), operations)
def test_any_sequence_of_leaves_joins_and_growth_keeps_each_rows_columns(lengths, ops):
    cache = _filled(lengths)
    expected = [[row.copy() for row in per_buffer] for per_buffer in _held(cache)]
    for op, arg in ops:
        if op == "leave" and len(cache.lengths):
            keep = np.array([i for i, k in enumerate(arg[: len(cache.lengths)]) if k], dtype=np.int64)
            cache = cache.select(keep)
            expected = [[per_buffer[i] for i in keep.tolist()] for per_buffer in expected]
        elif op == "join":
            other = _filled(arg)
            cache = cache.merge(other)
            expected = [mine + theirs for mine, theirs in zip(expected, _held(other), strict=True)]
        elif op == "grow":
            cache = cache.fit(arg)
            assert cache.capacity >= arg
        assert len(np.unique(cache.slots)) == len(cache.slots) and cache.span <= cache.num_slots
        for got, want in zip(_held(cache), expected, strict=True):
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
