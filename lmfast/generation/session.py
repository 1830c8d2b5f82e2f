"""The one KV-cached decode loop, with rows joining and leaving between steps (continuous batching).

`Generator.__call__`, `Generator.stream` and the server's engine thread all drive a
`DecodeSession`. A step advances every running row by one token in one forward call first, then
spends the step's token budget (`step_token_budget`) on the prompts waiting to join, first come
first served: whole prompts that fit are prefilled together (left padded among themselves, in
groups of similar length where another forward costs less than the padding: `length_groups`), a
longer one in chunks of what is left of the budget, one chunk per step, so a long prompt or a
scoring request delays the running rows by one bounded chunk per step instead of stopping them
for its whole prefill (vLLM's chunked prefill, TGI's token budget). A prompt that starts like a
sequence in the prefix cache (`lmfast.generation.prefix_cache`) prefills only the rest. A prompt
prefilled whole is stacked under the running rows' cache (the shorter side left padded along time,
padding masked out). Rows that finish leave the batch at once; cache columns no row attends to any
more are trimmed. Cancelling a row between steps drops its prompt's prefill too.

A failure is contained to the rows it concerns: a prefill that raises is retried one request at a
time and only the failing request's rows end, a row whose text cannot be decoded ends alone, and
a failed decode forward ends the rows of that forward. Each ends with an event whose `error` is
set, and the session goes on with the others.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lmfast.generation.backend import Backend, Past, left_padded
from lmfast.generation.model_files import ModelInfo
from lmfast.generation.params import DEFAULT_MAX_BATCH_SIZE, GenerationParams, ParamError
from lmfast.generation.prefix_cache import PrefixCache, past_nbytes
from lmfast.generation.sampling import SamplerRows, TokenLogprob, log_softmax, make_rng, token_logprobs
from lmfast.generation.text import TextCodec, TextStream

FinishReason = Literal["length", "stop", "eos", "error"]
PROMPT_LOGITS_BYTES = 64 * 2**20
"""Bound on one chunk's all-position logits (prompt logprobs): a scored prompt is prefilled in
chunks no longer than this allows, whatever its length."""
IDLE_STEP_TOKENS = 1024
"""With no row decoding nobody waits on a chunk, so a step may prefill up to this many prompt tokens
(still chunked: a cancelled request stops, and memory stays bounded, within one chunk)."""
MIN_STEP_TOKENS = 8
"""The stall bound never cuts a step's prompt tokens below this (a long prompt still advances)."""
SPLIT_FORWARD_ROWS = 8
"""A prompt forward's fixed cost (one read of every weight) in prompt rows of compute: fresh prompts
prefilled together are cut into groups of similar length (`length_groups`) wherever another
forward costs less than the padding rows it saves. Measured on SmolLM2-135M's MLP matrices on one
thread: one row costs about what 10 (bf16, lmfast's kernel) to 15 (fp32, MLAS) more rows of a large
batch add; 8 errs towards splitting, which costs at most a few forwards' weight reads."""
TIMING_WEIGHT = 0.3
"""Weight of the newest forward in the running means of decode and prefill time."""
__all__ = ["DEFAULT_MAX_BATCH_SIZE", "DecodeSession", "TokenEvent", "admissible"]


def admissible(sizes: Iterable[int], occupied: int, max_batch_size: int) -> int:
    """How many of the first requests join a batch now, first come first served.

    The one admission rule (the session and the server's engine both use it): requests join in
    order while their rows fit beside the `occupied` ones; a request larger than the whole batch
    joins an empty batch alone rather than waiting for ever.
    """
    count = 0
    for rows in sizes:
        if occupied > 0 and occupied + rows > max_batch_size:
            break
        occupied += rows
        count += 1
    return count


def length_groups(lengths: Sequence[int], fixed_rows: float = SPLIT_FORWARD_ROWS) -> list[list[int]]:
    """Prompts (by their lengths) in the groups to prefill together, as indices in arrival order.

    A group is left padded to its longest prompt, so it computes size x longest rows; each group
    also costs `fixed_rows`. Sorted by length, the cuts minimize the total (dynamic programming
    over the sorted lengths, O(n^2)): prompts of 2 to 8 tokens from 32 clients compute 256 rows in
    one group, of which only about 160 are real.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0.0] + [math.inf] * len(order)  # best[j]: the first j sorted prompts
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + fixed_rows + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j > 0:
        groups.append(sorted(order[cut[j] : j]))
        j = cut[j]
    return sorted(groups)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one row."""

    row_id: int
    token_id: int
    text: str
    """Newly decoded text (may be "": an incomplete character, held-back stop text, EOS)."""
    finished: bool
    finish_reason: FinishReason | None
    error: BaseException | None = None
    """Why the row ended early (finish_reason "error"): the others in the batch go on."""
    logprob: TokenLogprob | None = None
    """With `params.logprobs`: the token's log-probability (of the distribution sampled from)."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """With `params.prompt_logprobs`, on a row's first event: one entry per prompt token, the
    model's own log-probabilities (no sampling applied); the first token has none."""


@dataclass
class _Row:
    row_id: int
    params: GenerationParams
    sequence_index: int  # which of the request's num_return_sequences
    prompt_ids: list[int]
    stream: TextStream
    stop_ids: frozenset[int] = frozenset()
    tokens: list[int] = field(default_factory=list)  # generated so far (the last one not yet fed)
    finished: bool = False
    finish_reason: FinishReason | None = None

    @property
    def prompt_length(self) -> int:
        return len(self.prompt_ids)

    @property
    def generated(self) -> int:
        return len(self.tokens)


@dataclass(eq=False)  # compared by identity: two requests may carry the same prompt
class _Request:
    """One `add` call: waiting for room in the batch, then prefilled (whole or in chunks)."""

    prompt_ids: list[int]
    banned_ids: np.ndarray
    rows: list[_Row]
    grammar: str | None = None  # structured output (lmfast.generation.grammar), one matcher per row
    past: Past | None = None
    """The prompt's cache so far (batch 1) while it is prefilled in chunks."""
    done: int = 0
    """Prompt tokens in `past` (from the prefix cache or computed)."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """With `prompt_logprobs` asked: the entries of the chunks computed so far."""
    logits: np.ndarray | None = None
    """(1, V): the last prompt position's logits, once the whole prompt is in `past`."""

    @property
    def scored(self) -> bool:
        return self.rows[0].params.prompt_logprobs is not None

    @property
    def remaining(self) -> int:
        return len(self.prompt_ids) - self.done


@dataclass
class _Batch:
    """The running rows and everything kept per row, all in the same row order."""

    rows: list[_Row]
    past: Past
    attention_mask: np.ndarray  # (B, P) int64, one column per cache column
    next_position: np.ndarray  # (B,) int64, position of the pending token
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (B,) sampled, not fed
    sampler: SamplerRows | None = None


_NewRows = tuple[_Batch, np.ndarray, list[list[TokenLogprob | None] | None]]
"""Rows ready to join the batch: (the rows, their first logits (B, V), per row prompt logprobs)."""


class DecodeSession:
    """Iteration-level batching over one backend. Driven by ONE thread; not thread-safe.

    `len(session)` counts rows not yet finished (running plus waiting for room).
    """

    def __init__(
        self,
        backend: Backend,
        codec: TextCodec,
        info: ModelInfo,
        max_batch_size: int | None = None,
        step_token_budget: int | None = None,
        prefix_cache: PrefixCache | None = None,
        stall_ratio: float | None = None,
    ):
        """
        Args:
            step_token_budget: most prompt tokens one step prefills while rows are decoding (with
                none decoding, `IDLE_STEP_TOKENS` if larger); None: every admitted prompt is
                prefilled whole in the step it joins (offline generation: nobody is waiting).
            prefix_cache: where computed sequences are kept for prompts that start with them.
            stall_ratio: with a budget, also keep a step's prefill within this many times the
                running rows' own decode forward, from running means of both (measured, so it
                holds on any model, machine and load; `MIN_STEP_TOKENS` at least); None: the token
                budget alone.
        """
        if step_token_budget is not None and step_token_budget < 1:
            raise ValueError(f"step_token_budget must be >= 1, got {step_token_budget}")
        if stall_ratio is not None and not stall_ratio > 0:
            raise ValueError(f"stall_ratio must be > 0, got {stall_ratio}")
        self.backend = backend
        self.codec = codec
        self.info = info
        self.max_batch_size = max_batch_size or DEFAULT_MAX_BATCH_SIZE
        self.step_token_budget = step_token_budget
        self.prefix_cache = prefix_cache
        self.stall_ratio = stall_ratio
        self._decode_seconds: float | None = None  # running mean of a decode forward
        self._prefill_seconds_per_token: float | None = None  # running mean over prompt forwards
        self._eos = frozenset(int(t) for t in info.eos_token_ids)
        self._batch: _Batch | None = None
        self._waiting: list[_Request] = []
        self._prefilling: list[_Request] = []
        self._next_row_id = 0
        self._cache_bytes_per_token: int | None = None
        self.prefill_chunks = 0
        """Prompt forwards run so far (whole groups and chunks): a count tests can observe."""

    def __len__(self) -> int:
        running = len(self._batch.rows) if self._batch else 0
        return running + sum(len(r.rows) for r in self._waiting + self._prefilling)

    @property
    def num_prefilling(self) -> int:
        """Rows whose prompt is being prefilled (admitted, not yet decoding)."""
        return sum(len(r.rows) for r in self._prefilling)

    @property
    def num_running(self) -> int:
        return len(self._batch.rows) if self._batch else 0

    def admissible(self, sizes: Sequence[int]) -> int:
        """How many of requests with these row counts, in order, `add` may queue now so that all
        of them join at the next step (`admissible` beside every row not yet finished)."""
        return admissible(sizes, len(self), self.max_batch_size)

    def add(self, prompt: str, params: GenerationParams) -> list[int]:
        """Queue a prompt; it is prefilled at the next `step`.

        Returns:
            One row id per return sequence.

        Raises:
            ParamError: (a ValueError, field "prompt") the prompt leaves no room for a new token
                in the model's context.
        """
        return self.add_token_ids(self.codec.encode(prompt), params)

    def add_token_ids(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        banned_ids: np.ndarray | None = None,
        grammar: str | None = None,
    ) -> list[int]:
        """`add` for an already tokenized prompt (and banned words, `codec.banned_ids`), so a caller
        can tokenize on another thread than the one driving the session. `grammar` (from
        `Grammars.compile`) constrains every sequence of the prompt; such a row ends ("stop") as
        soon as its grammar is complete."""
        if not prompt_ids:  # an empty prompt starts from BOS (GPT-2: <|endoftext|>), as HF does
            start = (
                self.info.bos_token_id if self.info.bos_token_id is not None else self.info.eos_token_ids[0]
            )
            prompt_ids = [int(start)]
        if len(prompt_ids) >= self.info.max_context:
            raise ParamError(
                "prompt",
                f"is {len(prompt_ids)} tokens; the model's context is {self.info.max_context} "
                "tokens and must leave room for at least one new token",
            )
        self._check_token_ids(params)
        prompt_ids = list(prompt_ids)
        rows = []
        for index in range(params.num_return_sequences):
            rows.append(
                _Row(
                    self._next_row_id,
                    params,
                    index,
                    prompt_ids,
                    self.codec.stream(params.stop),
                    frozenset(params.stop_token_ids),
                )
            )
            self._next_row_id += 1
        if banned_ids is None:
            banned_ids = self.codec.banned_ids(params.banned_words)
        self._waiting.append(_Request(prompt_ids, banned_ids, rows, grammar))
        return [row.row_id for row in rows]

    def _check_token_ids(self, params: GenerationParams) -> None:
        """stop_token_ids and logit_bias keys must be ids of this model's vocabulary."""
        vocab = self.codec.vocab_size
        for name, ids in (("stop_token_ids", params.stop_token_ids), ("logit_bias", params.logit_bias)):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ParamError(name, f"token ids must be in [0, {vocab}), got {bad[0]}")

    def cancel(self, row_id: int) -> None:
        """Stop a row now (no event is emitted for it). Unknown or finished ids are ignored. A
        request whose rows are all cancelled stops its prefill (its partial cache is dropped)."""
        for request in self._waiting + self._prefilling:
            request.rows = [r for r in request.rows if r.row_id != row_id]
        self._waiting = [r for r in self._waiting if r.rows]
        self._prefilling = [r for r in self._prefilling if r.rows]
        if self._batch:
            for row in self._batch.rows:
                if row.row_id == row_id:
                    row.finished = True
            self._drop_finished()

    def step(self) -> list[TokenEvent]:
        """Advance every running row by one token, then prefill waiting prompts within the step's
        token budget (a prompt prefilled whole gets its first token).

        Returns:
            One event per row that produced a token in this step.
        """
        events: list[TokenEvent] = []
        batch = self._batch
        if batch is not None:
            try:
                mask = np.concatenate(
                    [batch.attention_mask, np.ones((len(batch.rows), 1), dtype=np.int64)], axis=1
                )
                started = time.perf_counter()
                logits, past = self.backend.forward(
                    batch.pending[:, None], mask, batch.next_position[:, None], batch.past
                )
                self._decode_seconds = _mean(self._decode_seconds, time.perf_counter() - started)
                tokens, logprobs = batch.sampler.choose(logits)
                done = batch.sampler.grammar_done
            except Exception as exc:  # one computation for all these rows: they end together
                self._batch = None
                events += _failed(batch.rows, exc)
            else:
                batch.past, batch.attention_mask = past, mask
                batch.next_position = batch.next_position + 1
                batch.pending = tokens
                events += self._record(batch.rows, tokens, done, logprobs)
                self._drop_finished()  # rows done now free their places for waiting ones
        self._prefilling += self._admit()
        if self._prefilling:
            events += self._prefill_step()
        return events

    def _admit(self) -> list[_Request]:
        """The waiting requests whose rows fit beside the running and prefilling ones."""
        occupied = self.num_running + self.num_prefilling
        count = admissible((len(r.rows) for r in self._waiting), occupied, self.max_batch_size)
        admitted, self._waiting = self._waiting[:count], self._waiting[count:]
        return admitted

    def _step_budget(self) -> float:
        """Prompt tokens this step may compute: the token budget, within the stall bound."""
        if self.step_token_budget is None:
            return float("inf")
        if self.num_running == 0:
            return max(self.step_token_budget, IDLE_STEP_TOKENS)
        if self.stall_ratio is None:
            return self.step_token_budget
        if self._decode_seconds is None or self._prefill_seconds_per_token is None:
            return min(self.step_token_budget, MIN_STEP_TOKENS)  # not measured yet: cautious
        bound = self.stall_ratio * self._decode_seconds / self._prefill_seconds_per_token
        return min(self.step_token_budget, max(MIN_STEP_TOKENS, int(bound)))

    def _timed_prompt_forward(self, tokens: int, *args: Any, **kwargs: Any) -> tuple[np.ndarray, Past]:
        """A prompt forward computing `tokens` positions, its time folded into the running mean."""
        started = time.perf_counter()
        result = self.backend.forward(*args, **kwargs)
        per_token = (time.perf_counter() - started) / max(1, tokens)
        self._prefill_seconds_per_token = _mean(self._prefill_seconds_per_token, per_token)
        self.prefill_chunks += 1
        return result

    def _prefill_step(self) -> list[TokenEvent]:
        """Spend this step's token budget on the prefilling requests, first come first served.

        A request not yet started first takes what the prefix cache holds of its prompt. A fresh
        prompt that fits what is left of the budget joins the group prefilled together; any other
        (longer, partly cached or scored) gets one chunk of what is left. Requests whose prompt
        is then complete join the running batch with their first token.
        """
        budget = self._step_budget()
        events: list[TokenEvent] = []
        group: list[_Request] = []
        complete: list[_Request] = []
        for request in list(self._prefilling):
            if budget <= 0:
                break
            try:
                if request.done == 0:
                    self._reuse_prefix(request)
                if request.done == 0 and not request.scored and request.remaining <= budget:
                    group.append(request)
                    budget -= request.remaining
                    continue
                chunk = int(min(request.remaining, budget, self._chunk_limit(request)))
                self._prefill_chunk(request, chunk)
            except Exception as exc:  # this request alone fails
                self._prefilling.remove(request)
                events += _failed(request.rows, exc)
                continue
            budget -= chunk
            if request.remaining == 0:
                complete.append(request)
        joining = group + complete
        self._prefilling = [r for r in self._prefilling if r not in joining]
        for part in length_groups([r.remaining for r in group]):
            events += self._join([group[i] for i in part], self._prefill)
        for request in complete:
            events += self._join([request], self._prefilled)
        return events

    def _chunk_limit(self, request: _Request) -> float:
        """A scored chunk's all-position logits stay within `PROMPT_LOGITS_BYTES`."""
        if not request.scored:
            return float("inf")
        return max(1, PROMPT_LOGITS_BYTES // (4 * self.codec.vocab_size))

    def _reuse_prefix(self, request: _Request) -> None:
        """Start the request from the longest cached prefix of its prompt, if any (never for a
        scored prompt: every position's logits are needed)."""
        if self.prefix_cache is None or request.scored:
            return
        found = self.prefix_cache.lookup(request.prompt_ids)
        if found is None:
            return
        prefix, length = found
        request.past = self.backend.extend_from(prefix, length, len(request.prompt_ids) - length)
        request.done = length

    def _prefill_chunk(self, request: _Request, chunk: int) -> None:
        """Compute the next `chunk` prompt tokens of one request onto its own cache (batch 1)."""
        start, end = request.done, request.done + chunk
        input_ids = np.asarray(request.prompt_ids[start:end], dtype=np.int64)[None]
        mask = np.ones((1, end), dtype=np.int64)
        positions = np.arange(start, end, dtype=np.int64)[None]
        if request.scored:  # logits at every position: only when asked
            all_logits, past = self._timed_prompt_forward(
                chunk, input_ids, mask, positions, request.past, all_logits=True
            )
            self._score_chunk(request, all_logits[0], start, end)
            last = all_logits[:, -1]
        else:
            last, past = self._timed_prompt_forward(chunk, input_ids, mask, positions, request.past)
        request.past, request.done = past, end
        if end == len(request.prompt_ids):
            request.logits = last

    def _score_chunk(self, request: _Request, logits: np.ndarray, start: int, end: int) -> None:
        """Append the prompt logprobs that a chunk's logits (T, V) give: position j predicts j + 1."""
        if request.prompt_logprobs is None:
            request.prompt_logprobs = [None]  # the first token has none
        targets = np.asarray(request.prompt_ids[start + 1 : end + 1], dtype=np.int64)
        if len(targets) == 0:
            return
        vocab = min(logits.shape[1], self.codec.vocab_size)
        top_n = request.rows[0].params.prompt_logprobs
        predicting = log_softmax(logits[: len(targets), :vocab])
        request.prompt_logprobs += token_logprobs(predicting, targets, [top_n] * len(targets))

    def _join(
        self, requests: list[_Request], build: Callable[[list[_Request]], _NewRows]
    ) -> list[TokenEvent]:
        """Add `requests`' rows (made by `build`) to the batch with their first token; if that
        fails, retry each alone so that only the request at fault ends."""
        try:
            fresh, logits, prompt_logprobs = build(requests)
            fresh.pending, logprobs = fresh.sampler.choose(logits)
            joined = fresh if self._batch is None else self._merge(self._batch, fresh)
        except Exception as exc:
            if len(requests) == 1:
                return _failed(requests[0].rows, exc)
            return [event for request in requests for event in self._join([request], build)]
        self._batch = joined
        events = self._record(
            fresh.rows, fresh.pending, fresh.sampler.grammar_done, logprobs, prompt_logprobs
        )
        self._drop_finished()
        return events

    def _prefill(self, requests: list[_Request]) -> _NewRows:
        """Run fresh prompts whole (each once, left padded) and expand to one row per sequence."""
        input_ids, mask, positions = left_padded([r.prompt_ids for r in requests])
        logits, past = self._timed_prompt_forward(input_ids.size, input_ids, mask, positions, None)
        return self._new_rows(requests, past, mask, logits, [None] * len(requests))

    def _prefilled(self, requests: list[_Request]) -> _NewRows:
        """The rows of one request whose prompt was prefilled in chunks."""
        (request,) = requests
        mask = np.ones((1, len(request.prompt_ids)), dtype=np.int64)
        return self._new_rows(requests, request.past, mask, request.logits, [request.prompt_logprobs])

    def _new_rows(
        self,
        requests: list[_Request],
        past: Past,
        mask: np.ndarray,
        logits: np.ndarray,
        per_request: list[list[TokenLogprob | None] | None],
    ) -> _NewRows:
        """Rows for prefilled prompts (`past`, `mask` and `logits` hold one row per request): the
        prompts are kept in the prefix cache, then expanded to one row per sequence.

        Returns:
            (the new rows, their last-position logits, per row its prompt logprobs or None).
        """
        for i, request in enumerate(requests):
            self._remember(request.prompt_ids, past, i, mask.shape[1] - len(request.prompt_ids))
        expand = np.repeat(np.arange(len(requests)), [len(r.rows) for r in requests])
        if len(expand) != len(requests):
            past = self.backend.select(past, expand)
        rows = [row for r in requests for row in r.rows]
        sampler = SamplerRows.build(
            params=[row.params for row in rows],
            rngs=[make_rng(row.params.seed, row.sequence_index) for row in rows],
            prompts=[requests[g].prompt_ids for g in expand],
            banned_ids=[requests[g].banned_ids for g in expand],
            # ids past the tokenizer's vocabulary (padding rows of the embedding) are never drawn
            vocab_size=min(logits.shape[1], self.codec.vocab_size),
            grammars=self._grammars([requests[g].grammar for g in expand]),
            eos_ids=sorted(self._eos),
        )
        batch = _Batch(
            rows=rows,
            past=past,
            attention_mask=mask[expand],
            next_position=np.array([row.prompt_length for row in rows], dtype=np.int64),
            sampler=sampler,
        )
        return batch, logits[expand], [per_request[g] for g in expand.tolist()]

    def _grammars(self, grammars: list[str | None]) -> list[Any] | None:
        """One matcher per row that has a grammar (llguidance is loaded only when one does)."""
        if not any(grammars):
            return None
        from lmfast.generation.grammar import Grammars

        compiled = Grammars.of(self.codec, self.info.eos_token_ids)
        return [None if g is None else compiled.matcher(g) for g in grammars]

    def _remember(self, tokens: list[int], past: Past, row: int, first: int) -> None:
        """Keep a copy of batch row `row`'s cache of `tokens` in the prefix cache (if it wants it)."""
        cache = self.prefix_cache
        if cache is None:
            return
        per_token = self._cache_bytes_per_token  # known after the first copy
        if per_token is not None and not cache.wants(tokens, len(tokens) * per_token):
            return
        prefix = self.backend.prefix(past, row, first, len(tokens))
        if per_token is None:
            self._cache_bytes_per_token = past_nbytes(prefix) // max(1, len(tokens))
        cache.add(tokens, prefix)

    def _record(
        self,
        rows: list[_Row],
        tokens: np.ndarray,
        grammar_done: np.ndarray,
        logprobs: list[TokenLogprob | None] | None = None,
        prompt_logprobs: list[list[TokenLogprob | None] | None] | None = None,
    ) -> list[TokenEvent]:
        """Record each row's new token, decode its text and decide whether the row is done."""
        events = []
        for i, (row, token, complete) in enumerate(
            zip(rows, tokens.tolist(), grammar_done.tolist(), strict=True)
        ):
            row.tokens.append(token)
            try:
                event = self._next_text(row, token, complete)
            except Exception as exc:  # this row's text alone: the others go on
                event = TokenEvent(row.row_id, token, "", True, "error", exc)
            if logprobs is not None or prompt_logprobs is not None:
                event = dataclasses.replace(
                    event,
                    logprob=None if logprobs is None else logprobs[i],
                    prompt_logprobs=None if prompt_logprobs is None else prompt_logprobs[i],
                )
            row.finished, row.finish_reason = event.finished, event.finish_reason
            events.append(event)
        return events

    def _next_text(self, row: _Row, token: int, grammar_complete: bool = False) -> TokenEvent:
        reason: FinishReason | None = None
        if token in self._eos and not row.params.ignore_eos:
            text, reason = row.stream.flush(), "eos"
        elif token in row.stop_ids:
            text, reason = row.stream.flush(), "stop"
        else:
            text, stopped = row.stream.push(token)
            if stopped:
                reason = "stop"
            elif grammar_complete:  # structured output: the answer is whole
                text, reason = text + row.stream.flush(), "stop"
            elif (
                row.generated >= row.params.max_new_tokens
                or row.prompt_length + row.generated >= self.info.max_context
            ):
                text, reason = text + row.stream.flush(), "length"
        return TokenEvent(row.row_id, token, text, reason is not None, reason)

    def _merge(self, first: _Batch, second: _Batch) -> _Batch:
        width = max(first.attention_mask.shape[1], second.attention_mask.shape[1])
        masks = [
            np.pad(b.attention_mask, ((0, 0), (width - b.attention_mask.shape[1], 0)))
            for b in (first, second)
        ]
        return _Batch(
            rows=first.rows + second.rows,
            past=self.backend.merge(first.past, second.past),
            attention_mask=np.concatenate(masks),
            next_position=np.concatenate([first.next_position, second.next_position]),
            pending=np.concatenate([first.pending, second.pending]),
            sampler=first.sampler.concat(second.sampler),
        )

    def _drop_finished(self) -> None:
        batch = self._batch
        if batch is None or not any(row.finished for row in batch.rows):
            return
        for i, row in enumerate(batch.rows):
            if row.finished and row.finish_reason in ("length", "stop", "eos"):
                self._remember_row(batch, i)
        keep = np.array([i for i, row in enumerate(batch.rows) if not row.finished], dtype=np.int64)
        if len(keep) == 0:
            self._batch = None
            return
        batch.rows = [batch.rows[i] for i in keep.tolist()]
        batch.past = self.backend.select(batch.past, keep)
        batch.attention_mask = batch.attention_mask[keep]
        batch.next_position = batch.next_position[keep]
        batch.pending = batch.pending[keep]
        batch.sampler = batch.sampler.select(keep)
        unused = int(np.argmax(batch.attention_mask.any(axis=0)))  # leading columns all rows mask out
        if unused:
            batch.past = self.backend.trim(batch.past, unused)
            batch.attention_mask = batch.attention_mask[:, unused:]

    def _remember_row(self, batch: _Batch, i: int) -> None:
        """Keep a finished row's prompt and reply (all but its last token, never fed) for the
        prompt that continues it: a chat's next turn."""
        if self.prefix_cache is None:
            return
        row = batch.rows[i]
        tokens = row.prompt_ids + row.tokens[:-1]
        held = int(batch.attention_mask[i].sum())
        if held != len(tokens):  # not the layout this relies on: keep nothing rather than guess
            return
        self._remember(tokens, batch.past, i, batch.attention_mask.shape[1] - held)


def _mean(mean: float | None, value: float) -> float:
    """A running mean weighted towards recent values (`TIMING_WEIGHT`)."""
    return value if mean is None else (1 - TIMING_WEIGHT) * mean + TIMING_WEIGHT * value


def _failed(rows: list[_Row], error: BaseException) -> list[TokenEvent]:
    """End `rows` with `error` (they leave the batch; no token was produced)."""
    for row in rows:
        row.finished = True
    return [TokenEvent(row.row_id, -1, "", True, "error", error) for row in rows]
