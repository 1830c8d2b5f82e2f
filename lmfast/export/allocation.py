"""Which block format each part of each matrix gets: measured sensitivity under a bit budget.

Q4_K_M keeps a fixed set of tensors at 6 bits (llama.cpp's rule: `recipes.MixedPlan.static_format`).
With calibration data the choice can be measured instead. Each unit (a torch module's columns of
one role; GPT-2's c_attn is q+k and v) is quantized in every format of the menu; its cost is the
bits it stores, its estimated KL(fp32 || quantized) per token is 1/2 sum_n F_n e_n over its output
columns n: e_n = dW_n^T G dW_n the output's mean squared error over the calibration inputs (G their
Gram matrix), F_n the Fisher information of the model's output distribution w.r.t. that output
(`calibration.measure_fisher`: one backward pass over a few samples). The multiple-choice
knapsack is then solved greedily on each unit's lower convex hull: from the cheapest format
everywhere, take the upgrade that saves the most estimated KL per extra stored bit while the total
stays within the budget; by default the bits the static rule stores, so the file keeps its size
and the bits move to where they were measured to pay.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lmfast.export.calibration import Calibration, roles_of
from lmfast.export.quantize import (
    BlockFormat,
    Quantized,
    dequantize_blocks,
    gptq_factor,
    padded_gram,
    quantize_format,
)


@dataclass(frozen=True)
class Unit:
    """Columns [start, stop) of one torch module's (K, N) weight that share a role."""

    module: str
    start: int
    stop: int
    role: str


@dataclass
class Choice:
    """What the allocation measured of one unit and chose for it."""

    unit: Unit
    k: int
    bits: list[int]  # stored bits per menu format
    kl: list[float]  # estimated KL per token per menu format
    chosen: int  # index into the menu
    quantized: Quantized | None = None  # the chosen format's arrays
    static: int = 0  # the static rule's format, index into the menu


def allocate(
    calibration: Calibration,
    weights: dict[str, np.ndarray],
    menu: Sequence[BlockFormat],
    block_size: int,
    budget_bits: int | None,
    static: Callable[[Unit], BlockFormat],
    gram_for: Callable[[BlockFormat], bool],
) -> tuple[dict[Unit, Choice], int]:
    """The format of every unit of `weights` (module -> (K, N)) within `budget_bits` (None: what
    `static(unit)` would store, which must be in `menu`). Returns the choices and the budget.

    `gram_for(fmt)`: whether that format is rounded GPTQ's way with the unit's Gram matrix."""
    choices: dict[Unit, Choice] = {}
    static_bits = 0
    # GPTQ's factor per (Gram matrix, padded K): once for all the units and formats reading it
    factors: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for module, weight in weights.items():
        k, width = weight.shape
        gram = calibration.gram.get(module)
        fisher = calibration.fisher.get(module)
        if gram is None or fisher is None:
            raise ValueError(f"{module}: no calibration measured its inputs and outputs")
        importance = np.ascontiguousarray(np.diag(gram), dtype=np.float32)
        for start, stop, role in roles_of(module, width):
            unit = Unit(module, start, stop, role)
            part = weight[:, start:stop]
            bits, kl, arrays = [], [], []
            for fmt in menu:
                size = fmt.block_size or block_size
                factor = None
                if gram_for(fmt):
                    key = (id(gram), -(-k // size) * size)
                    if key not in factors:
                        factors[key] = gptq_factor(padded_gram(gram, key[1]))
                    factor = factors[key]
                quantized = quantize_format(
                    part, fmt, size, importance, gram if gram_for(fmt) else None, factor
                )
                delta = (dequantize_blocks(*quantized, fmt.bits, k) - part).astype(np.float64)
                error = ((gram @ delta) * delta).sum(0)  # e_n: mean squared output error per column
                bits.append(fmt.stored_bits(k, stop - start, block_size))
                kl.append(0.5 * float(fisher[start:stop] @ error))
                arrays.append(quantized)
            choice = Choice(unit, k, bits, kl, int(np.argmin(bits)), None)
            choice.quantized = arrays  # type: ignore[assignment]  # every format's until chosen
            choices[unit] = choice
            choice.static = list(menu).index(static(unit))
            static_bits += bits[choice.static]
    budget = static_bits if budget_bits is None else budget_bits
    _greedy(choices, budget)
    for choice in choices.values():
        choice.quantized = choice.quantized[choice.chosen]  # type: ignore[index]
    return choices, budget


def _greedy(choices: dict[Unit, Choice], budget: int) -> None:
    """Upgrade units along their convex hulls, best KL saved per bit first, within `budget`."""
    hulls = {unit: _hull(c.bits, c.kl) for unit, c in choices.items()}
    for unit, choice in choices.items():
        choice.chosen = hulls[unit][0]
    spent = sum(c.bits[c.chosen] for c in choices.values())
    if spent > budget:
        raise ValueError(
            f"--bits_per_weight: the cheapest formats already store {spent} bits, over the budget of {budget}"
        )
    queue: list[tuple[float, int, Unit, int]] = []
    order = {unit: index for index, unit in enumerate(choices)}  # deterministic tie-break

    def push(unit: Unit, position: int) -> None:
        hull = hulls[unit]
        if position + 1 < len(hull):
            here, there = hull[position], hull[position + 1]
            choice = choices[unit]
            saved = choice.kl[here] - choice.kl[there]
            cost = choice.bits[there] - choice.bits[here]
            heapq.heappush(queue, (-saved / cost, order[unit], unit, position))

    for unit in choices:
        push(unit, 0)
    while queue:
        _, _, unit, position = heapq.heappop(queue)
        choice = choices[unit]
        target = hulls[unit][position + 1]
        extra = choice.bits[target] - choice.bits[choice.chosen]
        if spent + extra > budget:
            continue  # this unit stays; a cheaper upgrade of another may still fit
        spent += extra
        choice.chosen = target
        push(unit, position + 1)
    # off the hulls: the leftover bits may still buy a format a hull step skipped
    while True:
        options = [
            ((c.kl[c.chosen] - c.kl[i]) / max(1, c.bits[i] - c.bits[c.chosen]), -order[u], u, i)
            for u, c in choices.items()
            for i in range(len(c.bits))
            if c.kl[i] < c.kl[c.chosen] and spent + c.bits[i] - c.bits[c.chosen] <= budget
        ]
        if not options:
            return
        _, _, unit, index = max(options)
        spent += choices[unit].bits[index] - choices[unit].bits[choices[unit].chosen]
        choices[unit].chosen = index


def _hull(bits: list[int], kl: list[float]) -> list[int]:
    """Menu indices on the lower convex hull of (bits, KL) from the cheapest, KL decreasing:
    the upgrades worth taking in order of falling KL saved per bit."""
    order = sorted(range(len(bits)), key=lambda i: (bits[i], kl[i]))
    hull: list[int] = [order[0]]
    for index in order[1:]:
        if kl[index] >= kl[hull[-1]]:
            continue  # costs more, saves nothing
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is under the chord from a to index only if its slope is steeper
            slope_ab = (kl[b] - kl[a]) / (bits[b] - bits[a])
            slope_ai = (kl[index] - kl[a]) / (bits[index] - bits[a])
            if slope_ab <= slope_ai:
                break
            hull.pop()
        hull.append(index)
    return hull
