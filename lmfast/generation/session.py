"""The one KV-cached decode loop, with rows joining and leaving between steps (continuous batching).

`Generator.__call__`, `Generator.stream` and the server's engine thread all drive a
`DecodeSession`. A step advances every running row by one token in one forward call, then
prefills rows added since the last step (left padded among themselves) and stacks their cache
under the running rows' (the shorter side left padded along time, padding masked out). Rows that
finish leave the batch at once; cache columns no row attends to any more are trimmed.

A failure is contained to the rows it concerns: a prefill that raises is retried one request at a
time and only the failing request's rows end, a row whose text cannot be decoded ends alone, and
a failed decode forward ends the rows of that forward. Each ends with an event whose `error` is
set, and the session goes on with the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lmfast.generation.backend import Backend, Past, left_padded
from lmfast.generation.model_files import ModelInfo
from lmfast.generation.params import DEFAULT_MAX_BATCH_SIZE, GenerationParams, ParamError
from lmfast.generation.sampling import SamplerRows, TokenLogprob, log_softmax, make_rng, token_logprobs
from lmfast.generation.text import TextCodec, TextStream

FinishReason = Literal["length", "stop", "eos", "error"]
PROMPT_LOGITS_BYTES = 256 * 2**20
"""Bound on one prefill's all-position logits (prompt logprobs): requests beyond it prefill apart."""
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
    prompt_length: int
    stream: TextStream
    stop_ids: frozenset[int] = frozenset()
    generated: int = 0
    finished: bool = False


@dataclass
class _Request:
    """One `add` call waiting for room in the batch."""

    prompt_ids: list[int]
    banned_ids: np.ndarray
    rows: list[_Row]
    grammar: str | None = None  # structured output (lmfast.generation.grammar), one matcher per row


@dataclass
class _Batch:
    """The running rows and everything kept per row, all in the same row order."""

    rows: list[_Row]
    past: Past
    attention_mask: np.ndarray  # (B, P) int64, one column per cache column
    next_position: np.ndarray  # (B,) int64, position of the pending token
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (B,) sampled, not fed
    sampler: SamplerRows | None = None


class DecodeSession:
    """Iteration-level batching over one backend. Driven by ONE thread; not thread-safe.

    `len(session)` counts rows not yet finished (running plus waiting for room).
    """

    def __init__(
        self, backend: Backend, codec: TextCodec, info: ModelInfo, max_batch_size: int | None = None
    ):
        self.backend = backend
        self.codec = codec
        self.info = info
        self.max_batch_size = max_batch_size or DEFAULT_MAX_BATCH_SIZE
        self._eos = frozenset(int(t) for t in info.eos_token_ids)
        self._batch: _Batch | None = None
        self._waiting: list[_Request] = []
        self._next_row_id = 0

    def __len__(self) -> int:
        running = len(self._batch.rows) if self._batch else 0
        return running + sum(len(r.rows) for r in self._waiting)

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
        rows = []
        for index in range(params.num_return_sequences):
            rows.append(
                _Row(
                    self._next_row_id,
                    params,
                    index,
                    len(prompt_ids),
                    self.codec.stream(params.stop),
                    frozenset(params.stop_token_ids),
                )
            )
            self._next_row_id += 1
        if banned_ids is None:
            banned_ids = self.codec.banned_ids(params.banned_words)
        self._waiting.append(_Request(list(prompt_ids), banned_ids, rows, grammar))
        return [row.row_id for row in rows]

    def _check_token_ids(self, params: GenerationParams) -> None:
        """stop_token_ids and logit_bias keys must be ids of this model's vocabulary."""
        vocab = self.codec.vocab_size
        for name, ids in (("stop_token_ids", params.stop_token_ids), ("logit_bias", params.logit_bias)):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ParamError(name, f"token ids must be in [0, {vocab}), got {bad[0]}")

    def cancel(self, row_id: int) -> None:
        """Stop a row now (no event is emitted for it). Unknown or finished ids are ignored."""
        for request in self._waiting:
            request.rows = [r for r in request.rows if r.row_id != row_id]
        self._waiting = [r for r in self._waiting if r.rows]
        if self._batch:
            for row in self._batch.rows:
                if row.row_id == row_id:
                    row.finished = True
            self._drop_finished()

    def step(self) -> list[TokenEvent]:
        """Advance every running row by one token, then prefill waiting rows (their first token).

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
                logits, past = self.backend.forward(
                    batch.pending[:, None], mask, batch.next_position[:, None], batch.past
                )
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
        admitted = self._admit()
        if admitted:
            events += self._join(admitted)
        return events

    def _admit(self) -> list[_Request]:
        count = admissible((len(r.rows) for r in self._waiting), self.num_running, self.max_batch_size)
        admitted, self._waiting = self._waiting[:count], self._waiting[count:]
        return admitted

    def _join(self, requests: list[_Request]) -> list[TokenEvent]:
        """Prefill `requests` into the batch; if that fails, retry each alone so that only the
        request at fault ends."""
        groups = self._logit_groups(requests)
        if len(groups) > 1:
            return [event for group in groups for event in self._join(group)]
        try:
            fresh, logits, prompt_logprobs = self._prefill(requests)
            fresh.pending, logprobs = fresh.sampler.choose(logits)
            joined = fresh if self._batch is None else self._merge(self._batch, fresh)
        except Exception as exc:
            if len(requests) == 1:
                return _failed(requests[0].rows, exc)
            return [event for request in requests for event in self._join([request])]
        self._batch = joined
        events = self._record(
            fresh.rows, fresh.pending, fresh.sampler.grammar_done, logprobs, prompt_logprobs
        )
        self._drop_finished()
        return events

    def _logit_groups(self, requests: list[_Request]) -> list[list[_Request]]:
        """`requests` as prefill groups: one when no request wants prompt logprobs; else those
        that do in groups whose all-position logits, (B, T, V) float32, fit
        `PROMPT_LOGITS_BYTES` (a request alone may exceed it), the others together."""
        scored = [r for r in requests if r.rows[0].params.prompt_logprobs is not None]
        if not scored or (len(requests) == 1):
            return [requests]
        plain = [r for r in requests if r.rows[0].params.prompt_logprobs is None]
        groups: list[list[_Request]] = [plain] if plain else []
        group: list[_Request] = []
        for request in scored:
            longest = max([len(r.prompt_ids) for r in group] + [len(request.prompt_ids)])
            if group and (len(group) + 1) * longest * self.codec.vocab_size * 4 > PROMPT_LOGITS_BYTES:
                groups.append(group)
                group = []
            group.append(request)
        groups.append(group)
        return groups

    def _prefill(
        self, requests: list[_Request]
    ) -> tuple[_Batch, np.ndarray, list[list[TokenLogprob | None] | None]]:
        """Run the waiting prompts (each once, left padded) and expand to one row per sequence.

        Returns:
            (the new rows, their last-position logits, per row its prompt logprobs or None).
        """
        input_ids, mask, positions = left_padded([r.prompt_ids for r in requests])
        wanted = [r.rows[0].params.prompt_logprobs for r in requests]
        if any(n is not None for n in wanted):  # logits at every position: only when asked
            all_logits, past = self.backend.forward(input_ids, mask, positions, None, all_logits=True)
            logits = all_logits[:, -1]
            per_request = [
                None if n is None else self._prompt_logprobs(all_logits[i], r.prompt_ids, n)
                for i, (r, n) in enumerate(zip(requests, wanted, strict=True))
            ]
        else:
            logits, past = self.backend.forward(input_ids, mask, positions, None)
            per_request = [None] * len(requests)

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

    def _prompt_logprobs(
        self, logits: np.ndarray, prompt_ids: list[int], top_n: int
    ) -> list[TokenLogprob | None]:
        """The model's log-probability of each prompt token given those before it.

        logits: (T, V) of one left-padded row; its prompt fills the last len(prompt_ids) columns.
        """
        if len(prompt_ids) < 2:
            return [None] * len(prompt_ids)
        vocab = min(logits.shape[1], self.codec.vocab_size)
        predicting = logits[logits.shape[0] - len(prompt_ids) : -1, :vocab]  # column j predicts j + 1
        targets = np.asarray(prompt_ids[1:], dtype=np.int64)
        return [None, *token_logprobs(log_softmax(predicting), targets, [top_n] * len(targets))]

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
            row.generated += 1
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
            row.finished = event.finished
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


def _failed(rows: list[_Row], error: BaseException) -> list[TokenEvent]:
    """End `rows` with `error` (they leave the batch; no token was produced)."""
    for row in rows:
        row.finished = True
    return [TokenEvent(row.row_id, -1, "", True, "error", error) for row in rows]
