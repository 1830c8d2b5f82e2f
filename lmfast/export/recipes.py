"""Per-tensor quantization recipes: which columns of which matrix get which block format.

`mixed` is the Q4_K_M idea in MatMulNBits' layout: asymmetric 4-bit blocks whose scale and zero
point are searched (`quantize._searched`, weighted by the calibration importance when there is
one, and rounded GPTQ's way where the calibration measured the inputs' Gram matrix), some parts at
8 bits. Which parts: uncalibrated (or --allocation static), llama.cpp's rule: the attention values
and the FFN down projection of the layers `calibration.use_more_bits` picks, and the output head;
calibrated, by measured sensitivity within the same stored bits (`allocation.allocate`, over
`MENU`). `plain` is the earlier tier: one format for every matrix, the head at --lm_head_bits.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from lmfast.export.allocation import Choice, Unit, allocate
from lmfast.export.calibration import Calibration, Span, layer_of, use_more_bits
from lmfast.export.quantize import BlockFormat, ColumnPlan, Quantized

FOUR_BIT_SEARCHED = BlockFormat(bits=4, symmetric=False, rounding="searched")
EIGHT_BIT = BlockFormat(bits=8, symmetric=True, rounding="least_squares")
HEAD_EIGHT_BIT = BlockFormat(bits=8, symmetric=True, rounding="least_squares", block_size=64)
"""The head at 8 bits in blocks of 64: 8.5 bits per weight, llama.cpp's Q8_0 size (blocks of 32
with a float32 scale cost 9.0, and the head is the largest matrix of a small LM)."""
RECIPES = ("plain", "mixed")
EIGHT_BIT_GPTQ = BlockFormat(bits=8, symmetric=False, rounding="searched", block_size=128)
"""8-bit asymmetric blocks of 128 (8.3125 bits per weight), rounded GPTQ's way when calibrated:
fewer bits than Q8_0's 8.5, and the errors compensated where the inputs correlate."""
MENU = (FOUR_BIT_SEARCHED, EIGHT_BIT_GPTQ, HEAD_EIGHT_BIT, EIGHT_BIT)
"""The formats the sensitivity allocation chooses among (the static rule's three and one more)."""


class MixedPlan:
    """`plan(node, weight)` for `quantize.matmul_nbits_planned`, recording what it chose."""

    def __init__(
        self,
        calibration: Calibration,
        head_node: str | None,
        head_bits: int,
        gptq: bool = True,
        choices: dict[Unit, Choice] | None = None,
    ) -> None:
        self.calibration = calibration
        self.gptq = gptq
        self.head_node = head_node
        self.head_format = HEAD_EIGHT_BIT if head_bits == 8 else FOUR_BIT_SEARCHED
        self.weights_by_format: Counter[str] = Counter()
        self.unmatched: list[str] = []
        self.choices = {(u.module, u.role): c for u, c in (choices or {}).items()}

    def allocate(self, model: Any, block_size: int, budget_bits: int | None) -> int:
        """Choose every unit's format by measured sensitivity (`allocation.allocate`) within
        `budget_bits` (None: the static rule's bits). Needs `calibration.measure_fisher` done."""
        from lmfast.export.calibration import kn_weights

        choices, budget = allocate(
            self.calibration,
            kn_weights(model),
            MENU,
            block_size,
            budget_bits,
            lambda unit: self.static_format(unit.role, layer_of(unit.module)),
            self.uses_gram,
        )
        self.choices = {(u.module, u.role): c for u, c in choices.items()}
        return budget

    def uses_gram(self, fmt: BlockFormat) -> bool:
        return self.gptq and fmt.rounding == "searched"

    def __call__(self, node: str, weight: np.ndarray) -> ColumnPlan:
        spans = self.calibration.spans(weight)
        if spans is None:  # not a torch layer we can name: 4 bits, or the head's format
            self.unmatched.append(node)
            spans = [Span(0, weight.shape[1], node, "output" if node == self.head_node else "other", None)]
        groups: ColumnPlan = []
        keys: list[Any] = []
        for span in spans:
            fmt = self.format_of(span, node)
            choice = self.choices.get((span.module, span.role))
            done = None if choice is None else choice.quantized
            inputs = self.calibration.gram.get(span.module)  # one object for modules reading one input
            if groups and groups[-1][2] == fmt and keys[-1] is inputs:
                before = groups[-1][5]
                joined = None if before is None or done is None else _concatenate(before, done)
                groups[-1] = (groups[-1][0], span.stop, *groups[-1][2:5], joined)
                continue
            groups.append(
                (
                    span.start,
                    span.stop,
                    fmt,
                    self.calibration.importance(span.module),
                    inputs if self.uses_gram(fmt) else None,
                    done,
                )
            )
            keys.append(inputs)
        for start, stop, fmt, *_ in groups:
            self.weights_by_format[_name(fmt)] += weight.shape[0] * (stop - start)
        return groups

    def format_of(self, span: Span, node: str) -> BlockFormat:
        choice = self.choices.get((span.module, span.role))
        if choice is not None:
            return MENU[choice.chosen]
        return self.static_format("output" if node == self.head_node else span.role, span.layer)

    def static_format(self, role: str, layer: int | None) -> BlockFormat:
        """llama.cpp's Q4_K_M rule in lmfast's formats."""
        if role == "output":
            return self.head_format
        sensitive = role in ("attn_v", "ffn_down")
        if sensitive and layer is not None and use_more_bits(layer, self.calibration.layers):
            return EIGHT_BIT
        return FOUR_BIT_SEARCHED

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "weights_by_format": dict(self.weights_by_format),
            "unmatched_matmuls": len(self.unmatched),
        }
        if self.choices:
            choices = self.choices.values()
            record["formats_chosen"] = {
                f"{module}:{role}": _name(MENU[c.chosen]) for (module, role), c in self.choices.items()
            }
            record["estimated_kl_per_token"] = {  # 1/2 sum F e, the allocation's own estimate
                "chosen": sum(c.kl[c.chosen] for c in choices),
                "static": sum(c.kl[c.static] for c in choices),
            }
        return record


def _name(fmt: BlockFormat) -> str:
    size = f" blocks of {fmt.block_size}" if fmt.block_size else ""
    return f"{fmt.bits}-bit {'symmetric' if fmt.symmetric else 'asymmetric'} {fmt.rounding}{size}"


def _concatenate(first: Quantized, second: Quantized) -> Quantized:
    """Two column ranges' quantized arrays as one (N is the first axis of each)."""
    zero = None if first[2] is None or second[2] is None else np.concatenate([first[2], second[2]])
    return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]]), zero
