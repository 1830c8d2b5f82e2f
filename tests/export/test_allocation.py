"""The sensitivity allocation's bookkeeping: the bits it counts are the bits stored, and the
greedy choice stays within its budget and leaves no affordable upgrade untaken."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.export.allocation import Choice, Unit, _greedy, _hull
from lmfast.export.quantize import BlockFormat, quantize_format


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 200),
    n=st.integers(1, 9),
    bits=st.sampled_from([4, 8]),
    symmetric=st.booleans(),
    block_size=st.sampled_from([16, 32, 64, 128]),
)
def test_stored_bits_are_the_bytes_quantize_blocks_writes(k, n, bits, symmetric, block_size):
    fmt = BlockFormat(bits, symmetric, "least_squares" if symmetric else "searched", block_size)
    weight = np.random.default_rng(k * n).standard_normal((k, n)).astype(np.float32)
    arrays = quantize_format(weight, fmt, block_size)
    assert fmt.stored_bits(k, n, 32) == 8 * sum(a.nbytes for a in arrays if a is not None)


tables = st.lists(
    st.lists(st.tuples(st.integers(1, 50), st.floats(0.0, 10.0)), min_size=1, max_size=4),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(tables=tables, slack=st.floats(0.0, 1.0))
def test_greedy_keeps_to_its_budget_and_leaves_no_affordable_upgrade(tables, slack):
    choices = {}
    for index, table in enumerate(tables):
        unit = Unit(f"m{index}", 0, 1, "other")
        choices[unit] = Choice(unit, 1, [b for b, _ in table], [kl for _, kl in table], 0)
    cheapest = sum(min(c.bits) for c in choices.values())
    dearest = sum(max(c.bits) for c in choices.values())
    budget = int(cheapest + slack * (dearest - cheapest))
    _greedy(choices, budget)
    spent = sum(c.bits[c.chosen] for c in choices.values())
    assert spent <= budget
    for choice in choices.values():
        hull = _hull(choice.bits, choice.kl)
        # along the hull: more bits, less KL, and less KL saved per bit at each step
        slopes = [
            (choice.kl[b] - choice.kl[a]) / (choice.bits[b] - choice.bits[a])
            for a, b in zip(hull, hull[1:], strict=False)
        ]
        assert all(s < 0 for s in slopes) and slopes == sorted(slopes)
    # no other format of any unit, swapped in alone, lowers the KL within the budget
    for choice in choices.values():
        for bits, kl in zip(choice.bits, choice.kl, strict=True):
            if kl < choice.kl[choice.chosen]:
                assert spent + bits - choice.bits[choice.chosen] > budget
