"""The sensitivity allocation's bookkeeping: the bits it counts are the bits stored, and the
greedy choice stays within its budget and leaves no affordable upgrade untaken."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.export import quantize
from lmfast.export.allocation import Choice, Unit, _greedy, _hull, allocate
from lmfast.export.calibration import Calibration
from lmfast.export.quantize import BlockFormat, quantize_format
from lmfast.export.recipes import MENU


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


def test_allocation_is_the_same_with_and_without_the_native_kernels(monkeypatch):
    """The native kernels (and the GPTQ factor shared between units and formats) change nothing:
    every unit's bits, estimated KL, choice and arrays equal the NumPy reference's."""
    if not quantize.native_available():
        pytest.skip("lmfast.export._blockquant not built")
    rng = np.random.default_rng(0)
    shapes = {"h.0.attn.c_attn": (64, 96), "h.0.mlp.c_proj": (128, 64), "lm_head": (64, 200)}
    weights = {m: (rng.standard_normal(s) * 0.05).astype(np.float32) for m, s in shapes.items()}
    calibration = Calibration(layers=1)
    for module, (k, n) in shapes.items():
        x = rng.standard_normal((3 * k, k)) @ rng.standard_normal((k, k)) * 0.2 + rng.standard_normal(
            (3 * k, k)
        )
        calibration.gram[module] = x.T @ x / len(x)
        calibration.fisher[module] = rng.uniform(0.0, 2.0, n)

    def run() -> dict:
        choices, budget = allocate(
            calibration,
            weights,
            MENU,
            32,
            None,
            lambda unit: MENU[0] if unit.role == "other" else MENU[3],
            lambda fmt: fmt.rounding == "searched",
        )
        return {u: (c.bits, c.kl, c.chosen, c.quantized, budget) for u, c in choices.items()}

    native = run()
    monkeypatch.setattr(quantize, "_native", lambda: None)
    reference = run()
    assert list(native) == list(reference)
    for unit, (bits, kl, chosen, arrays, budget) in native.items():
        assert (bits, kl, chosen, budget) == reference[unit][:3] + (reference[unit][4],)
        for a, b in zip(arrays, reference[unit][3], strict=True):
            assert (a is None and b is None) or a.tobytes() == b.tobytes()
