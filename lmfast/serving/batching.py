"""Iteration-level (continuous) batching over the generator's `DecodeSession`.

One engine thread owns the session (it is not thread-safe). HTTP handlers, on the asyncio event
loop, `submit` a `GenerationJob` into a bounded waiting queue. Between decode steps the thread
admits waiting jobs while their rows fit in `max_batch_size`, runs one `session.step()` (which
advances every running row by one token, then prefills newcomers within `step_token_budget` prompt
tokens, long prompts in chunks, reusing what the prefix cache holds of them) and hands each job its
new text through `loop.call_soon_threadsafe`. A step is bounded, so a job cancelled mid-prefill
(client gone, timeout) is dropped between two chunks, and a step running longer than a bound shows
as a stalled engine (`stalled_s`). A finished row leaves the batch at once and its slot is reused at the
next step, as in TGI and vLLM; a cancelled job (client gone, timeout) has its rows dropped.
With `max_batch_size=1` jobs run strictly one after another: the "batching off" baseline.

Admission follows the session's one rule (`DecodeSession.admissible`: first come first served, an
oversized job alone). A failure while admitting, prefilling or decoding one job fails that job
alone (`ValueError` for bad input, else `JobFailedError`); if the thread dies anyway, every waiting
client is answered and `on_crash` is called (`lmfast serve` then exits non-zero).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lmfast.generation.params import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_PREFIX_CACHE_MB,
    DEFAULT_STALL_RATIO,
    DEFAULT_STEP_TOKEN_BUDGET,
    GenerationParams,
)
from lmfast.generation.prefix_cache import PrefixCache
from lmfast.serving.metrics import ServeMetrics

logger = logging.getLogger(__name__)

QUIET_S = 0.001
"""While gathering a first batch, a gap this long between arrivals ends the burst."""


class QueueFullError(RuntimeError):
    """The waiting queue is full; the client should retry after `retry_after_s` seconds (HTTP 429)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the request queue is full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class EngineStoppedError(RuntimeError):
    """The engine is not running (starting up or shutting down): HTTP 503."""


class JobFailedError(RuntimeError):
    """Generating this job failed on the server (a bug, not the request's fault): HTTP 500.

    The job alone fails; the engine and every other job go on.
    """


class _Codec(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def banned_ids(self, words: list[str]) -> np.ndarray: ...


class _Session(Protocol):
    """What the engine uses of `lmfast.generation`'s DecodeSession (docs/architecture.md)."""

    def admissible(self, sizes: Sequence[int]) -> int: ...
    def add_token_ids(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        banned_ids: np.ndarray | None = None,
        grammar: str | None = None,
    ) -> list[int]: ...
    def step(self) -> list[Any]: ...
    def cancel(self, row_id: int) -> None: ...
    def __len__(self) -> int: ...
    @property
    def num_prefilling(self) -> int: ...


class _Generator(Protocol):
    codec: _Codec

    def session(
        self,
        max_batch_size: int | None = None,
        step_token_budget: int | None = None,
        prefix_cache: PrefixCache | None = None,
        stall_ratio: float | None = None,
    ) -> _Session: ...


@dataclass(frozen=True)
class Piece:
    """Newly decoded text of one sequence of a job."""

    index: int
    """Choice index: prompt number x num_return_sequences + sequence number."""
    text: str
    finished: bool
    finish_reason: str | None
    """'length', 'stop' or 'eos' on the last piece of a sequence, else None."""
    token_id: int = -1
    logprob: Any = None
    """The token's `TokenLogprob` when the job asked for logprobs."""
    prompt_logprobs: Any = None
    """On a sequence's first piece, when the job asked: the prompt's `TokenLogprob`s."""


class GenerationJob:
    """One request's sequences: created and read on the event loop, decoded on the engine thread.

    The engine thread uses only `tokenize`, `post_admitted`, `post_error` and `row_finished`; the
    loop reads `admitted` and `pieces`.
    """

    def __init__(
        self,
        prompts: Sequence[str | list[int]],
        params: GenerationParams,
        loop: asyncio.AbstractEventLoop,
        grammar: str | None = None,
    ) -> None:
        """`prompts` are texts, or token ids already (a rendered chat template: no special tokens
        added); `grammar` constrains every row (structured output, lmfast.generation.grammar)."""
        self.prompts = list(prompts)
        self.grammar = grammar
        self.params = params
        self.n_rows = len(self.prompts) * params.num_return_sequences
        self.loop = loop
        self.arrived = time.perf_counter()
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.admitted: asyncio.Future[None] = loop.create_future()
        self.cancelled = False
        self.prompt_ids: list[list[int]] | None = None
        """Set by `tokenize`; None until then."""
        self.banned_ids: np.ndarray | None = None
        # written by the engine thread, read by the loop once the job's last piece arrived
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.row_ids: list[int] = []
        self._rows_left = self.n_rows  # engine side
        self._open = self.n_rows  # loop side
        self._inbox: asyncio.Queue[list[Piece] | BaseException] = asyncio.Queue()

    @property
    def done(self) -> bool:
        return self._open == 0

    def tokenize(self, codec: _Codec) -> None:
        """Encode the prompts and banned words. Call it off the engine thread (the server does, in a
        worker thread): a long banned-word list must not stall every other client's decode steps.

        Raises:
            Whatever the tokenizer raises on text it cannot encode.
        """
        # a rendered chat template arrives as token ids already (no special tokens added)
        self.prompt_ids = [list(p) if isinstance(p, list) else codec.encode(p) for p in self.prompts]
        self.banned_ids = codec.banned_ids(self.params.banned_words)
        self.prompt_tokens = sum(len(ids) for ids in self.prompt_ids)

    async def pieces(self, deadline: float | None = None) -> AsyncIterator[list[Piece]]:
        """Yield the pieces of each decode step until every sequence has finished.

        Args:
            deadline: `time.perf_counter()` value after which `TimeoutError` is raised.

        Raises:
            TimeoutError: past the deadline (the caller cancels the job).
            EngineStoppedError, JobFailedError: the engine stopped or generating this job failed.
        """
        # one timer per job rather than a wait_for (a task and a timer) per decode step
        timer = None
        if deadline is not None:
            timer = self.loop.call_later(max(0.0, deadline - time.perf_counter()), self._expire)
        try:
            while self._open > 0:
                item = await self._inbox.get()
                if isinstance(item, BaseException):
                    self._open = 0
                    raise item
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self._open -= sum(piece.finished for piece in item)
                yield item
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self) -> None:
        if self._open > 0:
            self._inbox.put_nowait(TimeoutError("request timed out"))

    # --- engine thread: the job's interface to the engine ----------------------------------------
    def post_admitted(self) -> bool:
        """The job joined the batch; False if its event loop is gone (nobody is waiting)."""
        self.admitted_at = time.perf_counter()
        return self._post(self._on_admitted, None)

    def post_error(self, error: BaseException) -> bool:
        """End the job with `error` (raised by `admitted` or by `pieces`); False if its loop is gone."""
        return self._post(self._on_error, error)

    def row_finished(self) -> bool:
        """Count one finished sequence; True when it was the job's last."""
        self._rows_left -= 1
        return self._rows_left == 0

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed: the client and its server are gone
            return False
        return True

    # --- event loop --------------------------------------------------------------------------------
    def deliver(self, pieces: list[Piece]) -> None:
        """Hand the job the pieces of one decode step (on its loop)."""
        self._inbox.put_nowait(pieces)

    def _on_admitted(self, error: BaseException | None) -> None:
        if self.admitted.done():
            return
        if error is None:
            self.admitted.set_result(None)
        else:
            self.admitted.set_exception(error)
            self.admitted.exception()  # retrieved: no "never retrieved" warning if nobody awaits
            self._inbox.put_nowait(error)

    def _on_error(self, error: BaseException) -> None:
        if self.admitted.done():
            self._inbox.put_nowait(error)
        else:
            self._on_admitted(error)


class BatchingEngine:
    """Decode many jobs together on one model: a bounded queue in front of one engine thread."""

    def __init__(
        self,
        generator: _Generator,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = 5.0,
        queue_size: int = 256,
        metrics: ServeMetrics | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
        step_token_budget: int | None = DEFAULT_STEP_TOKEN_BUDGET,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        stall_ratio: float | None = DEFAULT_STALL_RATIO,
    ) -> None:
        """
        Args:
            on_crash: called on the engine thread if it dies of an error no job could be blamed
                for (after every waiting client was answered).
            step_token_budget: prompt tokens prefilled per step while rows decode (None: whole
                prompts at once, the offline behaviour).
            prefix_cache_mb: the prefix cache's pool (0: no prefix cache).
            stall_ratio: a step's prefill within this many times the running rows' decode
                forward (None: the token budget alone); see `DecodeSession`.
        """
        if max_batch_size < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and queue_size must be >= 1, max_wait_ms >= 0")
        if (step_token_budget is not None and step_token_budget < 1) or prefix_cache_mb < 0:
            raise ValueError("step_token_budget must be >= 1 and prefix_cache_mb >= 0")
        self.generator = generator
        self.step_token_budget = step_token_budget
        self.prefix_cache_mb = prefix_cache_mb
        self.stall_ratio = stall_ratio
        self.prefix_cache: PrefixCache | None = None
        self.step_started: float | None = None
        """`time.monotonic()` when the running step began; None between steps."""
        self._cache_seen = (0, 0, 0)  # prefix cache lookups, hits, reused tokens already counted
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics
        self.on_crash = on_crash
        self.crashed: BaseException | None = None
        self._cond = threading.Condition()
        self._waiting: deque[GenerationJob] = deque()
        self._cancelled: list[GenerationJob] = []
        self._accepting = False
        self._stopping = False
        self._abort = False
        self._thread: threading.Thread | None = None
        self._job_seconds = 1.0  # running mean of admission-to-finish time, for Retry-After
        self.steps = 0

    # --- public API (any thread) ---------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread; the session is created on it."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="lmfast-engine", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def saturated(self) -> bool:
        """The waiting queue is full: new requests are refused (429) until it drains."""
        return len(self._waiting) >= self.queue_size

    def stalled_s(self) -> float:
        """How long the running step has taken so far (0 between steps): a step is bounded by the
        token budget, so a long one means a stuck engine."""
        started = self.step_started
        return 0.0 if started is None else max(0.0, time.monotonic() - started)

    def submit(self, job: GenerationJob) -> None:
        """Queue a job for the next free batch slots.

        Raises:
            EngineStoppedError: not running (HTTP 503).
            QueueFullError: `queue_size` jobs are already waiting (HTTP 429).
        """
        with self._cond:
            if not self.running:
                raise EngineStoppedError("the server is not accepting requests (starting or shutting down)")
            if len(self._waiting) >= self.queue_size:
                raise QueueFullError(self._retry_after())
            self._waiting.append(job)
            self._set_queue_depth()
            self._cond.notify()

    def cancel(self, job: GenerationJob) -> None:
        """Drop a job (client disconnected, timed out); idempotent, any thread."""
        if job.cancelled:
            return
        job.cancelled = True
        with self._cond:
            self._cancelled.append(job)
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting jobs, finish the queued and running ones, then end the thread.

        Args:
            timeout: seconds to wait for the drain; after it the remaining jobs fail with
                `EngineStoppedError`.

        Returns:
            True if every job finished normally.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        drained = not self._thread.is_alive()
        if not drained:
            with self._cond:
                self._abort = True
                self._cond.notify()
            self._thread.join()
        return drained

    # --- engine thread -------------------------------------------------------------------------
    def _retry_after(self) -> int:
        rounds = max(1.0, len(self._waiting) / self.max_batch_size)
        return max(1, min(60, math.ceil(self._job_seconds * rounds)))

    def _set_queue_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._waiting))

    def _run(self) -> None:
        rows: dict[int, tuple[GenerationJob, int]] = {}  # row id -> (job, choice index)
        try:
            session = self._new_session()
            while True:
                with self._cond:
                    while not (self._waiting or rows or self._cancelled or self._stopping):
                        self._cond.wait()
                    if self._abort or (self._stopping and not self._waiting and not rows):
                        break
                    if not rows and self._waiting:
                        self._gather()
                    cancelled, self._cancelled = self._cancelled, []
                    for job in cancelled:
                        self._drop(session, job, rows)
                    admitted = self._pop_admissible(session)
                    self._set_queue_depth()
                for job in admitted:
                    self._admit(session, job, rows)
                self._set_rows(session, rows)
                if rows:
                    session = self._step(session, rows)
                    self._set_rows(session, rows)
        except BaseException as exc:  # never leave clients waiting on a dead thread
            logger.exception("engine thread crashed")
            self.crashed = exc
            self._accepting = False
            self._fail_all(rows, EngineStoppedError("the engine stopped"))
            if self.on_crash is not None:
                self.on_crash(exc)
            raise
        finally:
            self._accepting = False
        self._fail_all(rows, EngineStoppedError("the server shut down before this request finished"))

    def _new_session(self) -> _Session:
        """A session with a new, empty prefix cache (a failed session's cache is not trusted)."""
        self.prefix_cache = None
        if self.prefix_cache_mb > 0:
            self.prefix_cache = PrefixCache(int(self.prefix_cache_mb * 2**20))
        self._cache_seen = (0, 0, 0)
        return self.generator.session(
            max_batch_size=self.max_batch_size,
            step_token_budget=self.step_token_budget,
            prefix_cache=self.prefix_cache,
            stall_ratio=self.stall_ratio,
        )

    def _set_rows(self, session: _Session, rows: dict[int, tuple[GenerationJob, int]]) -> None:
        if self.metrics is not None:
            self.metrics.active_rows.set(len(rows))
            self.metrics.prefilling_rows.set(session.num_prefilling)

    def _observe_prefix_cache(self) -> None:
        """Export what the prefix cache did since the last step."""
        metrics = self.metrics
        if metrics is None:
            return
        cache = self.prefix_cache
        if cache is None:
            return
        stats = cache.stats()
        seen = self._cache_seen
        metrics.prefix_cache_lookups.inc(stats.lookups - seen[0])
        metrics.prefix_cache_hits.inc(stats.hits - seen[1])
        metrics.prefix_cache_reused_tokens.inc(stats.reused_tokens - seen[2])
        metrics.prefix_cache_bytes.set(stats.bytes)
        metrics.prefix_cache_entries.set(stats.entries)
        self._cache_seen = (stats.lookups, stats.hits, stats.reused_tokens)

    def _gather(self) -> None:
        """Idle model, jobs waiting: let a burst of arrivals gather into one prefill (lock held).

        Waits up to `max_wait_ms` for enough rows to fill a batch, but stops as soon as no new job
        arrived for `QUIET_S`: a lone client pays about a millisecond, not the whole window.
        """
        deadline = time.monotonic() + self.max_wait_s
        while not self._stopping and sum(j.n_rows for j in self._waiting) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            before = len(self._waiting)
            self._cond.wait(min(remaining, QUIET_S))
            if len(self._waiting) == before:
                break

    def _pop_admissible(self, session: _Session) -> list[GenerationJob]:
        """The waiting jobs that join at the next step, by the session's admission rule (lock held)."""
        if any(job.cancelled for job in self._waiting):
            self._waiting = deque(job for job in self._waiting if not job.cancelled)
        count = session.admissible([job.n_rows for job in self._waiting])
        return [self._waiting.popleft() for _ in range(count)]

    def _admit(
        self, session: _Session, job: GenerationJob, rows: dict[int, tuple[GenerationJob, int]]
    ) -> None:
        """Add the job's rows to the session (prefilled at the next step), or fail the job alone."""
        n = job.params.num_return_sequences
        try:
            if job.prompt_ids is None:  # submitted without `tokenize` (the server always calls it)
                job.tokenize(self.generator.codec)
            assert job.prompt_ids is not None
            for p, prompt_ids in enumerate(job.prompt_ids):
                for s, row_id in enumerate(
                    session.add_token_ids(prompt_ids, job.params, job.banned_ids, job.grammar)
                ):
                    rows[row_id] = (job, p * n + s)
                    job.row_ids.append(row_id)
        except Exception as exc:
            self._drop(session, job, rows)
            job.post_error(_job_error(exc, client_fault=isinstance(exc, ValueError)))
            return
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(job.prompt_tokens)
            self.metrics.queue_wait.observe(time.perf_counter() - job.arrived)
        if not job.post_admitted():
            self._drop(session, job, rows)

    def _drop(
        self, session: _Session, job: GenerationJob, rows: dict[int, tuple[GenerationJob, int]]
    ) -> None:
        for row_id in job.row_ids:
            if rows.pop(row_id, None) is not None:
                session.cancel(row_id)

    def _step(self, session: _Session, rows: dict[int, tuple[GenerationJob, int]]) -> _Session:
        """One decode step; returns the session to keep using (a fresh one if this one failed)."""
        started = time.perf_counter()
        batch = len(rows)
        self.step_started = time.monotonic()
        try:
            events = session.step()
        except Exception as exc:  # a bug outside what the session contains itself: start afresh
            logger.exception("decode step failed; failing the %d running sequences", batch)
            self._fail_all(rows, JobFailedError(f"decode step failed ({type(exc).__name__})"), waiting=False)
            return self._new_session()
        finally:
            self.step_started = None
        elapsed = time.perf_counter() - started
        self.steps += 1
        if self.metrics is not None:
            self.metrics.observe_step(batch, len(events), elapsed)
        self._observe_prefix_cache()
        by_job: dict[GenerationJob, list[Piece]] = {}
        for event in events:
            entry = rows.get(event.row_id)
            if entry is None:  # a row cancelled after the step began
                continue
            job, index = entry
            if event.error is not None:  # this job alone fails; its other rows leave the batch
                self._drop(session, job, rows)
                by_job.pop(job, None)
                job.post_error(_job_error(event.error, client_fault=False))
                continue
            job.completion_tokens += 1
            if event.finished:
                del rows[event.row_id]
                if job.row_finished() and job.admitted_at is not None:
                    self._job_seconds = 0.8 * self._job_seconds + 0.2 * (
                        time.perf_counter() - job.admitted_at
                    )
            by_job.setdefault(job, []).append(
                Piece(
                    index,
                    event.text,
                    event.finished,
                    event.finish_reason,
                    event.token_id,
                    event.logprob,
                    event.prompt_logprobs,
                )
            )
        # one wake-up per event loop and step, not one per job: at 32 streams this is 32x fewer
        # self-pipe writes and loop iterations competing with the decode thread for the GIL
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationJob, list[Piece]]]] = {}
        for job, pieces in by_job.items():
            by_loop.setdefault(job.loop, []).append((job, pieces))
        for loop, deliveries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, deliveries)
            except RuntimeError:  # loop closed: those clients and their server are gone
                for job, _ in deliveries:
                    self._drop(session, job, rows)
        return session

    def _fail_all(
        self, rows: dict[int, tuple[GenerationJob, int]], error: BaseException, *, waiting: bool = True
    ) -> None:
        jobs = {job for job, _ in rows.values()}
        rows.clear()
        if waiting:
            with self._cond:
                jobs.update(self._waiting)
                self._waiting.clear()
                self._set_queue_depth()
        for job in jobs:
            job.post_error(error)


def _job_error(error: BaseException, client_fault: bool) -> BaseException:
    """What the job's client is told: a ValueError it caused (HTTP 422), else a JobFailedError
    (HTTP 500) whose cause is logged here, with its traceback, and never sent to the client."""
    if client_fault:
        return error
    logger.error("a job failed; the engine goes on", exc_info=error)
    failed = JobFailedError(f"generation failed on the server ({type(error).__name__})")
    failed.__cause__ = error
    return failed


def _deliver(deliveries: list[tuple[GenerationJob, list[Piece]]]) -> None:
    """On the event loop: hand each job the pieces of one decode step."""
    for job, pieces in deliveries:
        job.deliver(pieces)
