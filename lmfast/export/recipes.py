"""Per-tensor quantization recipes: which columns of which matrix get which block format.

`mixed` is the Q4_K_M idea in MatMulNBits' layout: asymmetric 4-bit blocks whose scale and zero
point are searched (`quantize._searched`, weighted by the calibration importance when there is
one, and rounded GPTQ's way where the calibration measured the inputs' Gram matrix), with the tensors llama.cpp found sensitive kept at 8 bits: the attention values and the FFN
down projection of the layers `calibration.use_more_bits` picks, and the output head. `plain` is
the earlier tier: one format for every matrix, the head at --lm_head_bits.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from lmfast.export.calibration import Calibration, Span, use_more_bits
from lmfast.export.quantize import BlockFormat, ColumnPlan

FOUR_BIT_SEARCHED = BlockFormat(bits=4, symmetric=False, rounding="searched")
EIGHT_BIT = BlockFormat(bits=8, symmetric=True, rounding="least_squares")
HEAD_EIGHT_BIT = BlockFormat(bits=8, symmetric=True, rounding="least_squares", block_size=64)
"""The head at 8 bits in blocks of 64: 8.5 bits per weight, llama.cpp's Q8_0 size (blocks of 32
with a float32 scale cost 9.0, and the head is the largest matrix of a small LM)."""
RECIPES = ("plain", "mixed")


class MixedPlan:
    """`plan(node, weight)` for `quantize.matmul_nbits_planned`, recording what it chose."""

    def __init__(
        self, calibration: Calibration, head_node: str | None, head_bits: int, gptq: bool = True
    ) -> None:
        self.calibration = calibration
        self.gptq = gptq
        self.head_node = head_node
        self.head_format = HEAD_EIGHT_BIT if head_bits == 8 else FOUR_BIT_SEARCHED
        self.weights_by_format: Counter[str] = Counter()
        self.unmatched: list[str] = []

    def __call__(self, node: str, weight: np.ndarray) -> ColumnPlan:
        spans = self.calibration.spans(weight)
        if spans is None:  # not a torch layer we can name: 4 bits, or the head's format
            self.unmatched.append(node)
            spans = [Span(0, weight.shape[1], node, "output" if node == self.head_node else "other", None)]
        groups: ColumnPlan = []
        keys: list[Any] = []
        for span in spans:
            fmt = self.format_of(span, node)
            inputs = self.calibration.gram.get(span.module)  # one object for modules reading one input
            if groups and groups[-1][2] == fmt and keys[-1] is inputs:
                groups[-1] = (groups[-1][0], span.stop, *groups[-1][2:])
                continue
            use_gram = self.gptq and fmt.rounding == "searched"
            groups.append(
                (
                    span.start,
                    span.stop,
                    fmt,
                    self.calibration.importance(span.module),
                    inputs if use_gram else None,
                )
            )
            keys.append(inputs)
        for start, stop, fmt, *_ in groups:
            self.weights_by_format[_name(fmt)] += weight.shape[0] * (stop - start)
        return groups

    def format_of(self, span: Span, node: str) -> BlockFormat:
        if span.role == "output" or node == self.head_node:
            return self.head_format
        sensitive = span.role in ("attn_v", "ffn_down")
        if sensitive and span.layer is not None and use_more_bits(span.layer, self.calibration.layers):
            return EIGHT_BIT
        return FOUR_BIT_SEARCHED

    def record(self) -> dict[str, Any]:
        return {
            "weights_by_format": dict(self.weights_by_format),
            "unmatched_matmuls": len(self.unmatched),
        }


def _name(fmt: BlockFormat) -> str:
    return f"{fmt.bits}-bit {'symmetric' if fmt.symmetric else 'asymmetric'} {fmt.rounding}"
