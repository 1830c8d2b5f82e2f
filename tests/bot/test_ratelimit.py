"""Sliding-window rate limit per chat, on a controlled clock, in bounded memory."""

from __future__ import annotations

from lmfast.bot.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limit_per_window_then_recovers():
    clock = Clock()
    limiter = RateLimiter(limit=2, window_s=10, clock=clock)
    assert limiter.acquire(1) == 0 and limiter.acquire(1) == 0
    assert limiter.acquire(1) == 10.0
    assert limiter.acquire(2) == 0, "other chats are not affected"
    clock.now += 4
    assert limiter.acquire(1) == 6.0, "refused requests do not count"
    clock.now += 6
    assert limiter.acquire(1) == 0


def test_memory_is_bounded_by_max_chats():
    limiter = RateLimiter(limit=1, window_s=60, max_chats=3, clock=Clock())
    for chat in range(100):
        limiter.acquire(chat)
    assert len(limiter) == 3
    assert limiter.acquire(99) > 0, "recent chats are still limited"
