"""Next-token selection for a whole batch at once, in NumPy (the ONNX path must not need torch).

Every row carries its own parameters as arrays (temperature, top_k, top_p, repetition penalty,
banned-token mask) and its own seeded RNG, so rows with different settings share one batch and a
seeded row draws the same tokens whatever else is in the batch. The math is vectorized over rows;
the only per-row Python is one uniform draw from each sampling row's RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmfast.generation.params import GenerationParams

MIN_DIVISOR = 1e-6
"""Floor for temperature and repetition penalty as divisors, so logits stay finite."""


def _scale(logits: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """Temperature-scaled float32 logits; a tiny temperature acts as (nearly) greedy, never inf."""
    divisor = np.maximum(temperature.astype(np.float32), np.float32(MIN_DIVISOR))
    return logits.astype(np.float32) / divisor[:, None]


def _sample_unfiltered(logits: np.ndarray, temperature: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw over the full softmax of each row, in vocabulary order."""
    scaled = _scale(logits, temperature)
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    cumulative = np.cumsum(probs, axis=1)
    target = uniforms * cumulative[:, -1]
    choice = np.argmax(cumulative > target[:, None], axis=1)
    return choice.astype(np.int64)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """CTRL penalty (Keskar et al. 2019, as HF): seen tokens' positive logits are divided by the
    penalty, negative ones multiplied, so a penalty > 1 always lowers them.

    Args:
        logits: (B, V) float32.
        seen: (B, V) bool, tokens already in the row's prompt or output.
        penalty: (B,) float32; 1 leaves the row unchanged.
    """
    # floor: a denormal penalty would turn logits into inf/NaN instead of just "very strong"
    p = np.maximum(penalty, MIN_DIVISOR)[:, None]
    penalized = np.where(logits > 0, logits / p, logits * p)
    return np.where(seen, penalized, logits)


def apply_banned(logits: np.ndarray, banned: np.ndarray) -> np.ndarray:
    """Banned tokens get -inf, so neither argmax nor sampling can pick them. banned: (B, V) bool."""
    return np.where(banned, -np.inf, logits)


def sample(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_k: np.ndarray,
    top_p: np.ndarray,
    uniforms: np.ndarray,
) -> np.ndarray:
    """Draw one token per row from temperature-scaled, top-k and top-p filtered distributions.

    Args:
        logits: (B, V) float32, already penalized/banned.
        temperature: (B,) > 0.
        top_k: (B,) int, 0 disables.
        top_p: (B,) in (0, 1], 1 disables.
        uniforms: (B,) in [0, 1), one draw per row from the row's own RNG (inverse-CDF sampling).

    Returns:
        (B,) int64 token ids.
    """
    # rows with neither top-k nor top-p draw from the whole softmax in vocabulary order: no sort
    # (a full argsort of a 50k vocabulary per row per step dominated such requests)
    unfiltered = (top_k <= 0) & (top_p >= 1.0)
    if unfiltered.all():
        return _sample_unfiltered(logits, temperature, uniforms)
    nucleus_only = top_k <= 0  # (and top_p < 1): candidates come from the nucleus search below
    if unfiltered.any() or (nucleus_only.any() and not nucleus_only.all()):
        tokens = np.empty(logits.shape[0], dtype=np.int64)
        for rows in (unfiltered, nucleus_only & ~unfiltered, ~nucleus_only):
            if rows.any():
                tokens[rows] = sample(
                    logits[rows], temperature[rows], top_k[rows], top_p[rows], uniforms[rows]
                )
        return tokens
    batch, vocab = logits.shape
    scaled = _scale(logits, temperature)
    log_total = None  # the softmax normalizer, when candidates are a subset of a row's support
    if nucleus_only.all():
        k_max, log_total = _nucleus_bound(scaled, top_p)
    else:
        k_max = int(min(top_k.max(), vocab))  # only the largest k of the batch needs sorting
    if k_max < vocab:
        candidates = np.argpartition(-scaled, k_max - 1, axis=1)[:, :k_max]
        values = np.take_along_axis(scaled, candidates, axis=1)
    else:
        candidates = np.broadcast_to(np.arange(vocab), (batch, vocab))
        values = scaled
    order = np.argsort(-values, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)  # (B, K) descending
    token_ids = np.take_along_axis(candidates, order, axis=1)

    k_row = np.where(top_k <= 0, k_max, np.minimum(top_k, k_max))
    values = np.where(np.arange(k_max)[None, :] < k_row[:, None], values, -np.inf)
    if log_total is None:
        probs = np.exp(values - values[:, :1])
        probs /= probs.sum(axis=1, keepdims=True)
    else:  # top-p over the whole vocabulary: probabilities of the full softmax, not renormalized
        probs = np.exp(values - log_total[:, None])
    # nucleus: keep a token while the mass before it is below p (the top token always stays)
    before = np.cumsum(probs, axis=1) - probs
    probs = np.where(before < top_p[:, None], probs, 0.0)

    cumulative = np.cumsum(probs, axis=1)
    target = uniforms * cumulative[:, -1]
    choice = np.argmax(cumulative > target[:, None], axis=1)
    return token_ids[np.arange(batch), choice].astype(np.int64)


def _nucleus_bound(scaled: np.ndarray, top_p: np.ndarray, first_try: int = 256) -> tuple[int, np.ndarray]:
    """How many of the most likely tokens certainly hold every row's nucleus.

    Sorting only those gives the same nucleus as sorting the whole vocabulary: a token outside the
    top m has at least the top m's mass before it, so once that mass reaches p it is excluded.
    Usually a few hundred tokens suffice; otherwise the bound doubles up to the vocabulary.

    Returns:
        (m, log of each row's softmax normalizer), shape (B,).
    """
    vocab = scaled.shape[1]
    peak = scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled - peak)
    total = probs.sum(axis=1)
    log_total = np.log(total) + peak[:, 0]
    m = min(first_try, vocab)
    while m < vocab:
        top = np.partition(probs, vocab - m, axis=1)[:, vocab - m :]
        if np.all(top.sum(axis=1) >= top_p * total):
            return m, log_total
        m = min(2 * m, vocab)
    return vocab, log_total


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    """(token id, log-probability), most likely first; as many as asked for."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 for the normalizer (-inf logits stay -inf)."""
    x = logits.astype(np.float64)
    peak = x.max(axis=-1, keepdims=True)
    return (x - peak - np.log(np.exp(x - peak).sum(axis=-1, keepdims=True))).astype(np.float32)


def token_logprobs(logprobs: np.ndarray, tokens: np.ndarray, top_n: Sequence[int]) -> list[TokenLogprob]:
    """Each row's chosen token's log-probability and its `top_n[row]` most likely alternatives.

    Args:
        logprobs: (N, V) log-probabilities; tokens: (N,) the chosen ids; top_n: (N,) counts >= 0.
    """
    out = []
    width = int(max(top_n, default=0))
    if width:
        vocab = logprobs.shape[1]
        width = min(width, vocab)
        best = np.argpartition(-logprobs, width - 1, axis=1)[:, :width] if width < vocab else None
    for row, (token, n) in enumerate(zip(tokens.tolist(), top_n, strict=True)):
        top: tuple[tuple[int, float], ...] = ()
        if n:
            ids = best[row] if best is not None else np.arange(logprobs.shape[1])
            ids = ids[np.argsort(-logprobs[row, ids], kind="stable")][:n]
            top = tuple((int(i), float(logprobs[row, i])) for i in ids)
        out.append(TokenLogprob(int(token), float(logprobs[row, token]), top))
    return out


def make_rng(seed: int | None, index: int) -> np.random.Generator:
    """The RNG of return sequence `index` of a request: seeded ones are reproducible, and
    sequence 0 with seed s draws the same as a single-sequence request with seed s."""
    return np.random.default_rng(None if seed is None else [seed, index])


@dataclass
class SamplerRows:
    """Per-row sampling state of a batch, kept in step with the batch's rows (select/concat)."""

    temperature: np.ndarray  # (B,) float32, 0 = greedy
    top_k: np.ndarray  # (B,) int64
    top_p: np.ndarray  # (B,) float32
    repetition_penalty: np.ndarray  # (B,) float32
    seen: np.ndarray  # (B, V) bool: prompt and output tokens, for the repetition penalty
    banned: np.ndarray  # (B, V) bool
    has_banned: np.ndarray  # (B,) bool, rows whose banned mask is not empty
    rngs: list[np.random.Generator]
    grammars: list[Any] | None = None
    """Per row, a `lmfast.generation.grammar.RowGrammar` (structured output) or None; None: no row."""
    bias: np.ndarray | None = None  # (B, V) float32 logit bias, None when no row has one
    min_tokens: np.ndarray | None = None  # (B,) int64: EOS/stop ids banned while generated < this
    generated: np.ndarray | None = None  # (B,) int64 tokens drawn so far
    min_ban: np.ndarray | None = None  # (B, V) bool, the EOS and stop ids min_tokens holds back
    logprobs: np.ndarray | None = None  # (B,) int64 top alternatives to report; -1: no logprobs
    # What the batch needs, decided once per batch composition rather than at every step: a
    # step's small NumPy calls run with caches cold from the forward pass, ~10-20 us each.
    _any_penalty: bool = field(init=False, repr=False)
    _any_banned: bool = field(init=False, repr=False)
    _sampling_rows: np.ndarray = field(init=False, repr=False)
    _device_ready: bool = field(init=False, repr=False)
    grammar_done: np.ndarray = field(init=False, repr=False)
    """(B,) bool after `next_tokens`: rows whose grammar has just been completed."""

    def __post_init__(self) -> None:
        if self.grammars is not None and not any(g is not None for g in self.grammars):
            self.grammars = None
        self.grammar_done = np.zeros(len(self.rngs), dtype=bool)
        batch = len(self.rngs)
        if self.min_tokens is None:
            self.min_tokens = np.zeros(batch, dtype=np.int64)
        if self.generated is None:
            self.generated = np.zeros(batch, dtype=np.int64)
        if self.logprobs is None:
            self.logprobs = np.full(batch, -1, dtype=np.int64)
        self._any_penalty = bool(np.any(self.repetition_penalty != 1.0))
        self._any_banned = bool(self.has_banned.any())
        self._sampling_rows = np.flatnonzero(self.temperature > 0)
        # nothing needs the logits on the host: a backend that keeps them on its device picks there
        self._device_ready = not (
            self._any_penalty
            or self._any_banned
            or self.bias is not None
            or self.grammars is not None
            or self.min_ban is not None
            or bool((self.logprobs >= 0).any())
        )

    @classmethod
    def build(
        cls,
        params: Sequence[GenerationParams],
        rngs: Sequence[np.random.Generator],
        prompts: Sequence[Sequence[int]],
        banned_ids: Sequence[np.ndarray],
        vocab_size: int,
        grammars: Sequence[Any] | None = None,
        eos_ids: Sequence[int] = (),
    ) -> SamplerRows:
        """State for new rows: one entry per row in each argument (`eos_ids`: the model's, which
        `min_tokens` holds back with each row's `stop_token_ids`)."""
        batch = len(params)
        seen = np.zeros((batch, vocab_size), dtype=bool)
        banned = np.zeros((batch, vocab_size), dtype=bool)
        for row, (prompt, ids) in enumerate(zip(prompts, banned_ids, strict=True)):
            seen[row, np.asarray(prompt, dtype=np.int64)] = True
            banned[row, ids] = True
        bias = min_ban = None
        if any(p.logit_bias for p in params):
            bias = np.zeros((batch, vocab_size), dtype=np.float32)
            for row, p in enumerate(params):
                for token, value in p.logit_bias.items():
                    if token < vocab_size:
                        bias[row, token] = value
        if any(p.min_tokens for p in params):
            min_ban = np.zeros((batch, vocab_size), dtype=bool)
            for row, p in enumerate(params):
                if p.min_tokens:
                    ids = [t for t in (*eos_ids, *p.stop_token_ids) if t < vocab_size]
                    min_ban[row, ids] = True
        return cls(
            temperature=np.array([p.temperature for p in params], dtype=np.float32),
            top_k=np.array([p.top_k for p in params], dtype=np.int64),
            top_p=np.array([p.top_p for p in params], dtype=np.float32),
            repetition_penalty=np.array([p.repetition_penalty for p in params], dtype=np.float32),
            seen=seen,
            banned=banned,
            has_banned=banned.any(axis=1),
            rngs=list(rngs),
            grammars=None if grammars is None else list(grammars),
            bias=bias,
            min_tokens=np.array([p.min_tokens for p in params], dtype=np.int64),
            min_ban=min_ban,
            logprobs=np.array([-1 if p.logprobs is None else p.logprobs for p in params], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.rngs)

    def select(self, rows: np.ndarray) -> SamplerRows:
        """Keep (or repeat) the given rows, in that order."""
        return SamplerRows(
            temperature=self.temperature[rows],
            top_k=self.top_k[rows],
            top_p=self.top_p[rows],
            repetition_penalty=self.repetition_penalty[rows],
            seen=self.seen[rows],
            banned=self.banned[rows],
            has_banned=self.has_banned[rows],
            rngs=[self.rngs[i] for i in rows.tolist()],
            grammars=None if self.grammars is None else [self.grammars[i] for i in rows.tolist()],
            bias=None if self.bias is None else self.bias[rows],
            min_tokens=self.min_tokens[rows],
            generated=self.generated[rows],
            min_ban=None if self.min_ban is None else self.min_ban[rows],
            logprobs=self.logprobs[rows],
        )

    def concat(self, other: SamplerRows) -> SamplerRows:
        """This batch's rows followed by `other`'s."""
        return SamplerRows(
            temperature=np.concatenate([self.temperature, other.temperature]),
            top_k=np.concatenate([self.top_k, other.top_k]),
            top_p=np.concatenate([self.top_p, other.top_p]),
            repetition_penalty=np.concatenate([self.repetition_penalty, other.repetition_penalty]),
            seen=np.concatenate([self.seen, other.seen]),
            banned=np.concatenate([self.banned, other.banned]),
            has_banned=np.concatenate([self.has_banned, other.has_banned]),
            rngs=self.rngs + other.rngs,
            grammars=_joined(self.grammars, other.grammars, len(self), len(other)),
            bias=_stack_optional(self.bias, other.bias, len(self), len(other), np.float32),
            min_tokens=np.concatenate([self.min_tokens, other.min_tokens]),
            generated=np.concatenate([self.generated, other.generated]),
            min_ban=_stack_optional(self.min_ban, other.min_ban, len(self), len(other), bool),
            logprobs=np.concatenate([self.logprobs, other.logprobs]),
        )

    def next_tokens(self, logits: np.ndarray) -> np.ndarray:
        """Pick each row's next token from its (B, V) logits (`choose` without the logprobs)."""
        return self.choose(logits)[0]

    def choose(self, logits: np.ndarray) -> tuple[np.ndarray, list[TokenLogprob | None] | None]:
        """Pick each row's next token from its (B, V) logits.

        Greedy rows (temperature 0) take the argmax of the penalized, biased, banned logits; the
        rest sample. Work is skipped where no row needs it, so an all-greedy batch costs one argmax.
        Tokens are recorded as seen while some row of the batch uses a repetition penalty (a
        row's `seen` is read only for its own penalty).

        Returns:
            (tokens (B,) int64, per row its `TokenLogprob` or None, or None when no row asked):
            log-probabilities of the distribution sampled from, after penalty, bias, bans and
            temperature (a greedy row's temperature counts as 1), before top-k/top-p.

        Logits a backend left on its device (`next_tokens` method, e.g. the torch backend's
        `DeviceLogits`) are picked from there when no row needs a host-side feature: only the ids
        come back, and each sampling row still draws its one uniform from its own RNG.
        """
        on_device = getattr(logits, "next_tokens", None)
        if on_device is not None and self._device_ready:
            sampling = self._sampling_rows
            uniforms = np.array([self.rngs[i].random() for i in sampling.tolist()])
            tokens = on_device(
                self.seen.shape[1],
                sampling,
                self.temperature[sampling],
                self.top_k[sampling],
                self.top_p[sampling],
                uniforms,
            )
            self.generated += 1
            return tokens, None
        logits = np.asarray(logits).astype(np.float32, copy=False)
        logits = logits[:, : self.seen.shape[1]]  # a padded vocabulary's extra ids are never drawn
        if self._any_penalty:
            logits = apply_repetition_penalty(logits, self.seen, self.repetition_penalty)
        if self.bias is not None:
            logits = logits + self.bias
        if self._any_banned:
            logits = apply_banned(logits, self.banned)
        if self.grammars is not None:  # structured output: each constrained row's token mask
            logits = apply_banned(logits, self._grammar_refused(logits.shape[1]))
        if self.min_ban is not None:
            logits = apply_banned(logits, (self.generated < self.min_tokens)[:, None] & self.min_ban)
        tokens = np.argmax(logits, axis=1)
        sampling = self._sampling_rows
        if sampling.size:
            uniforms = np.array([self.rngs[i].random() for i in sampling.tolist()])
            tokens[sampling] = sample(
                logits[sampling],
                self.temperature[sampling],
                self.top_k[sampling],
                self.top_p[sampling],
                uniforms,
            )
        if self._any_penalty:
            self.seen[np.arange(len(tokens)), tokens] = True
        if self.grammars is not None:
            for row, grammar in enumerate(self.grammars):
                if grammar is not None:
                    grammar.consume(int(tokens[row]))
                    self.grammar_done[row] = grammar.done
        self.generated += 1
        return tokens, self._logprobs(logits, tokens)

    def _logprobs(self, logits: np.ndarray, tokens: np.ndarray) -> list[TokenLogprob | None] | None:
        rows = np.flatnonzero(self.logprobs >= 0)
        if rows.size == 0:
            return None
        temperature = np.where(self.temperature[rows] > 0, self.temperature[rows], np.float32(1.0))
        logprobs = log_softmax(_scale(logits[rows], temperature))
        out: list[TokenLogprob | None] = [None] * len(tokens)
        for row, entry in zip(
            rows.tolist(), token_logprobs(logprobs, tokens[rows], self.logprobs[rows]), strict=True
        ):
            out[row] = entry
        return out

    def _grammar_refused(self, width: int) -> np.ndarray:
        """(B, width) bool: tokens each constrained row's grammar does not allow next."""
        refused = np.zeros((len(self), width), dtype=bool)
        for row, grammar in enumerate(self.grammars or ()):
            if grammar is not None:
                refused[row] = ~grammar.allowed(width)
        return refused


def _joined(
    first: list[Any] | None, second: list[Any] | None, n_first: int, n_second: int
) -> list[Any] | None:
    if first is None and second is None:
        return None
    return (first or [None] * n_first) + (second or [None] * n_second)


def _stack_optional(
    first: np.ndarray | None, second: np.ndarray | None, n_first: int, n_second: int, dtype: type
) -> np.ndarray | None:
    """Stack two optional (B, V) per-row arrays, zeros standing in for a missing side."""
    if first is None and second is None:
        return None
    vocab = (first if first is not None else second).shape[1]
    parts = [
        a if a is not None else np.zeros((n, vocab), dtype=dtype)
        for a, n in ((first, n_first), (second, n_second))
    ]
    return np.concatenate(parts)
