"""Losses of a causal LM on padded batches: next-token cross-entropy and unlikelihood candidates.

Both take logits already aligned with their targets: `logits[:, t]` predicts `labels[:, t]`
(the caller shifts by one); labels equal to IGNORE_INDEX (padding) never count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmfast.train.datamodule import IGNORE_INDEX


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) logits and (B, T) labels -> the same logits and (B, T) next-token targets.

    The labels move left by one (the last position gets IGNORE_INDEX) instead of slicing the logits:
    slicing (B, T, V) and flattening it would copy the largest tensor of the step.
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return logits, targets


def lm_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy (float32) and the number of targets it covers.

    Returning the sum and the count (not the mean) lets validation weight every token equally
    across batches and ranks.
    """
    loss = F.cross_entropy(
        logits.view(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, (targets != IGNORE_INDEX).sum()


def unlikelihood_candidates_loss(
    logits: torch.Tensor, targets: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """Unlikelihood loss on previous-context candidates (Welleck et al. 2019, arXiv:1908.04319).

    At each position t the candidates are the distinct tokens already in the context (`context[:, :t+1]`)
    other than the true next token; the loss is the mean of -log(1 - p(candidate)) over every
    (position, candidate) pair. Unlike a naive version, which compared against the current input
    token, the candidates exclude the *target* (what the model should predict), and a token repeated
    in the context counts once.

    Args:
        logits: (B, T, V) next-token logits; logits[:, t] predicts targets[:, t].
        targets: (B, T) next-token ids, IGNORE_INDEX where nothing is predicted (padding).
        context: (B, T) input ids; context[:, t] is the token the model saw at position t.

    Returns:
        Scalar float32 loss (0 when there are no candidates).
    """
    B, T, _ = logits.shape
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, T, 1)
    cands = context.unsqueeze(1).expand(B, T, T)  # (B, t, j): token at j as a candidate for position t
    cand_logp = logits.gather(2, cands) - log_z  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril()  # j <= t
    # count each distinct token once: keep j only where the token did not occur before j
    same = context.unsqueeze(2) == context.unsqueeze(1)  # (B, j, i)
    earlier = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril(-1)  # i < j
    first = ~(same & earlier).any(dim=2)  # (B, T)
    mask = causal.unsqueeze(0) & first.unsqueeze(1)
    mask &= cands != targets.unsqueeze(2)  # not the true next token
    mask &= (targets != IGNORE_INDEX).unsqueeze(2)  # only positions that predict something
    # masked mean without indexing: no host sync, fixed shapes for torch.compile
    nll = -torch.log(torch.clamp(1.0 - cand_logp.exp(), min=1e-5))
    return (nll * mask).sum() / mask.sum().clamp(min=1)
