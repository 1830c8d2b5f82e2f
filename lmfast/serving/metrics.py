"""Prometheus metrics of one app, in a registry of its own.

A per-app `CollectorRegistry` (not prometheus-client's global one) lets tests and benchmarks build
many apps in one process without "Duplicated timeseries" errors.
"""

from __future__ import annotations

import time
from collections import deque
from threading import Lock

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
THROUGHPUT_WINDOW_S = 10.0
"""tokens/s gauge = tokens generated over the last this-many seconds, divided by it."""


class ServeMetrics:
    """Counters, gauges and histograms the server updates; `/metrics` renders them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "lmfast_http_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "lmfast_request_latency_seconds",
            "Generation request latency, from arrival to last token.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "lmfast_time_to_first_token_seconds",
            "From arrival to the first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "lmfast_queue_wait_seconds",
            "From arrival to joining the batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("lmfast_queue_depth", "Requests waiting for a batch slot.", registry=r)
        self.active_rows = Gauge("lmfast_active_rows", "Sequences in the running batch.", registry=r)
        self.batch_size = Histogram(
            "lmfast_batch_size", "Sequences advanced by one decode step.", buckets=BATCH_BUCKETS, registry=r
        )
        self.step_latency = Histogram(
            "lmfast_decode_step_seconds", "Duration of one decode step.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.generated_tokens = Counter("lmfast_generated_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("lmfast_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.rejected = Counter(
            "lmfast_rejected_requests", "Requests refused or dropped, by reason.", ["reason"], registry=r
        )
        self.prefilling_rows = Gauge(
            "lmfast_prefilling_rows", "Sequences whose prompt is being prefilled (in chunks).", registry=r
        )
        self.prefix_cache_lookups = Counter(
            "lmfast_prefix_cache_lookups", "Prompts looked up in the prefix cache.", registry=r
        )
        self.prefix_cache_hits = Counter(
            "lmfast_prefix_cache_hits", "Prompts that started from a cached prefix.", registry=r
        )
        self.prefix_cache_reused_tokens = Counter(
            "lmfast_prefix_cache_reused_tokens",
            "Prompt tokens taken from the prefix cache, not prefilled.",
            registry=r,
        )
        self.prefix_cache_bytes = Gauge(
            "lmfast_prefix_cache_bytes", "Bytes of keys and values held by the prefix cache.", registry=r
        )
        self.prefix_cache_entries = Gauge(
            "lmfast_prefix_cache_entries", "Sequences held by the prefix cache.", registry=r
        )
        self.tokens_per_second = Gauge(
            "lmfast_tokens_per_second",
            f"Generated tokens/s over the last {THROUGHPUT_WINDOW_S:g} s.",
            registry=r,
        )
        self.tokens_per_second.set_function(self._recent_throughput)
        self._recent: deque[tuple[float, int]] = deque()
        self._recent_lock = Lock()

    def observe_step(self, rows: int, tokens: int, seconds: float) -> None:
        """Called by the engine thread after every decode step."""
        self.batch_size.observe(rows)
        self.step_latency.observe(seconds)
        self.generated_tokens.inc(tokens)
        now = time.monotonic()
        with self._recent_lock:
            self._recent.append((now, tokens))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self._recent.popleft()

    def _recent_throughput(self) -> float:
        with self._recent_lock:
            self._trim(time.monotonic())
            return sum(tokens for _, tokens in self._recent) / THROUGHPUT_WINDOW_S

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
