"""Losses: padding never counts; the unlikelihood loss against a brute-force reference."""

from __future__ import annotations

import math

import torch

from lmfast.train.datamodule import IGNORE_INDEX, Collator
from lmfast.train.losses import lm_loss_sum, shift_for_next_token, unlikelihood_candidates_loss


def test_padding_does_not_change_the_loss():
    torch.manual_seed(0)
    table = torch.randn(50, 50)
    sample = torch.tensor([3, 7, 7, 1, 9])

    def loss(batch: dict[str, torch.Tensor]) -> float:
        logits, targets = shift_for_next_token(table[batch["input_ids"]], batch["labels"])
        total, count = lm_loss_sum(logits, targets)
        return float(total / count)

    alone = Collator(0)([sample])
    padded = Collator(0, pad_to_multiple_of=16)([sample])
    assert padded["input_ids"].shape[1] == 16
    assert math.isclose(loss(alone), loss(padded), rel_tol=1e-6)


def _reference_ul(logits: torch.Tensor, targets: torch.Tensor, context: torch.Tensor) -> float:
    terms = []
    probs = logits.softmax(-1)
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if targets[b, t] == IGNORE_INDEX:
                continue
            for c in set(context[b, : t + 1].tolist()) - {int(targets[b, t])}:
                terms.append(-math.log(max(1.0 - float(probs[b, t, c]), 1e-5)))
    return sum(terms) / len(terms)


def test_against_brute_force_unlikelihood():
    torch.manual_seed(1)
    ids = torch.tensor([[5, 2, 5, 5, 3, 1], [4, 4, 2, 0, 0, 0]])
    labels = ids.masked_fill(torch.tensor([[0] * 6, [0, 0, 0, 1, 1, 1]]).bool(), IGNORE_INDEX)
    logits, targets = shift_for_next_token(torch.randn(2, 6, 8), labels)
    got = float(unlikelihood_candidates_loss(logits, targets, ids))
    assert math.isclose(got, _reference_ul(logits, targets, ids), rel_tol=1e-5)


def test_unlikelihood_pushes_down_repeated_context_tokens():
    ids = torch.tensor([[1, 2, 3, 4]])
    logits = torch.zeros(1, 3, 6, requires_grad=True)
    loss = unlikelihood_candidates_loss(logits, ids[:, 1:], ids[:, :-1])
    loss.backward()
    assert logits.grad[0, 2, 1] > 0 and logits.grad[0, 2, 5] < 0  # token 1 (in context) pushed down
