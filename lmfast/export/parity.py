"""Parity of an exported graph with the torch model it came from, measured at export time.

Two figures on real, left-padded prompts of different lengths: the max absolute logit difference
over the prompt step and `steps` teacher-forced decode steps, and whether free-running greedy
decoding (the real `DecodeSession` on each backend) yields identical tokens for `steps` steps.
For lossy tiers the figures that matter: greedy tokens until the first divergence per prompt,
perplexity against fp32's on a text, and whether a prompt decoded alone gets its batched tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmfast.generation.backend import left_padded
from lmfast.generation.model_files import ModelInfo
from lmfast.generation.onnx_backend import OnnxBackend
from lmfast.generation.params import GenerationParams
from lmfast.generation.session import DecodeSession
from lmfast.generation.text import TextCodec
from lmfast.generation.torch_backend import TorchBackend

PARITY_PROMPTS = (
    "Supposing that Truth is a woman--what then?",
    "He who fights with monsters should be careful lest he thereby become a monster.",
    "God is dead.",
    "The",
)
# fp32 may differ from torch by reassociation only: a tolerance relative to the logits' scale
FP32_RELATIVE_TOLERANCE = 1e-4


def measure_parity(
    model: Any, tokenizer_dir: Path, onnx_dir: Path, steps: int, provider: str = "cpu"
) -> dict:
    """Compare the ONNX graph in `onnx_dir` with `model` (an HF torch causal LM).

    Returns:
        export.json's "parity" entry: max_abs_logit_diff, max_abs_logit, tolerance,
        greedy_tokens_identical, greedy_tokens_until_divergence (per prompt), greedy_batch_invariant,
        greedy_steps, prompts, provider, quality, and `passed` (the fp32 criterion).
    """
    codec = TextCodec.load(tokenizer_dir)
    info = ModelInfo.from_dir(onnx_dir)  # the export's config.json: every eos id it stops on
    reference = TorchBackend(model)
    # the staging copy is renamed into place after this check: no cache entry for its passing path
    candidate = OnnxBackend.load(onnx_dir, provider=provider, native_ops_cache=False)
    prompts = [codec.encode(p)[: info.max_context // 2] for p in PARITY_PROMPTS]
    steps = min(steps, info.max_context - max(map(len, prompts)) - 1)

    diff, scale = _teacher_forced_diff(reference, candidate, prompts, steps)
    greedy = GenerationParams(max_new_tokens=steps, temperature=0.0)
    tokens = [
        _greedy_tokens(DecodeSession(backend, codec, info), prompts, greedy)
        for backend in (reference, candidate)
    ]
    alone = _greedy_tokens(DecodeSession(candidate, codec, info), prompts[:1], greedy)[0]
    quality = _quality(reference, candidate, codec.encode(" ".join(PARITY_PROMPTS))[: info.max_context - 1])
    tolerance = FP32_RELATIVE_TOLERANCE * max(1.0, scale)
    identical = tokens[0] == tokens[1]
    return {
        "prompts": len(prompts),
        "greedy_steps": steps,
        "max_abs_logit_diff": diff,
        "max_abs_logit": scale,
        "tolerance": tolerance,
        "greedy_tokens_identical": identical,
        "greedy_tokens_until_divergence": [divergence(a, b, steps) for a, b in zip(*tokens, strict=True)],
        "greedy_batch_invariant": alone == tokens[1][0],
        "provider": provider,
        "quality": quality,
        "passed": bool(identical and diff <= tolerance),
    }


def _quality(reference, candidate, ids: list[int]) -> dict[str, float]:
    """Teacher-forced over one text, token by token through the cache: how often the candidate's
    top-1 token equals the reference's, and both perplexities of the text's next tokens."""
    top1, nll = [], {"reference": 0.0, "candidate": 0.0}
    past = {"reference": None, "candidate": None}
    for t in range(len(ids) - 1):
        step = np.array([[ids[t]]], dtype=np.int64)
        mask, position = np.ones((1, t + 1), dtype=np.int64), np.array([[t]], dtype=np.int64)
        argmax = []
        for name, backend in (("reference", reference), ("candidate", candidate)):
            logits, past[name] = backend.forward(step, mask, position, past[name])
            logits = logits[0].astype(np.float64)
            log_z = logits.max() + np.log(np.exp(logits - logits.max()).sum())
            nll[name] += float(log_z - logits[ids[t + 1]])
            argmax.append(int(logits.argmax()))
        top1.append(argmax[0] == argmax[1])
    count = max(1, len(ids) - 1)
    return {
        "tokens": count,
        "top1_agreement": float(np.mean(top1)) if top1 else 1.0,
        "perplexity": float(np.exp(nll["candidate"] / count)),
        "perplexity_reference": float(np.exp(nll["reference"] / count)),
        "perplexity_delta": float(np.exp(nll["candidate"] / count) - np.exp(nll["reference"] / count)),
    }


def divergence(reference: list[int], candidate: list[int], steps: int) -> int:
    """Greedy tokens until the first divergence: the length of the common prefix, or `steps` (all of
    them) when both are the same, also when both stopped early at an end-of-sequence token, so the
    per-prompt counts agree with `greedy_tokens_identical` (identical iff every count is `steps`)."""
    if reference == candidate:
        return steps
    for index, (a, b) in enumerate(zip(reference, candidate, strict=False)):
        if a != b:
            return index
    return min(len(reference), len(candidate))


def _teacher_forced_diff(reference, candidate, prompts: list[list[int]], steps: int) -> tuple[float, float]:
    """Feed both backends the same tokens (the reference's argmax) and track the logit gap."""
    input_ids, mask, positions = left_padded(prompts)
    ref_logits, ref_past = reference.forward(input_ids, mask, positions, None)
    cand_logits, cand_past = candidate.forward(input_ids, mask, positions, None)
    diff, scale = 0.0, 0.0
    for _ in range(steps):
        diff = max(diff, float(np.abs(ref_logits - cand_logits).max()))
        scale = max(scale, float(np.abs(ref_logits).max()))
        token = ref_logits.argmax(axis=1)[:, None]
        mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        ref_logits, ref_past = reference.forward(token, mask, positions, ref_past)
        cand_logits, cand_past = candidate.forward(token, mask, positions, cand_past)
    return diff, scale


def _greedy_tokens(
    session: DecodeSession, prompts: list[list[int]], params: GenerationParams
) -> list[list[int]]:
    rows = [session.add_token_ids(ids, params)[0] for ids in prompts]
    tokens: dict[int, list[int]] = {row: [] for row in rows}
    while len(session):
        for event in session.step():
            tokens[event.row_id].append(event.token_id)
    return [tokens[row] for row in rows]
