"""Per-chat rate limit: at most N generation requests per sliding window, in bounded memory."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class RateLimiter:
    """Sliding-window limiter keyed by chat id.

    Memory is bounded twice: each chat keeps at most `limit` timestamps, and at most `max_chats`
    chats are tracked (the least recently seen is forgotten, which can only make it more lenient).
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        max_chats: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_chats < 1:
            raise ValueError("limit and max_chats must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self.max_chats = max_chats
        self._clock = clock
        self._hits: OrderedDict[int, deque[float]] = OrderedDict()

    def acquire(self, chat_id: int) -> float:
        """Count one request for the chat if allowed.

        Returns:
            0.0 when the request is allowed (and counted), else the seconds until one will be.
        """
        now = self._clock()
        hits = self._hits.pop(chat_id, None) or deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        self._hits[chat_id] = hits  # re-inserted: most recently seen goes last
        while len(self._hits) > self.max_chats:
            self._hits.popitem(last=False)
        if len(hits) >= self.limit:
            return max(hits[0] + self.window_s - now, 0.001)
        hits.append(now)
        return 0.0

    def __len__(self) -> int:
        return len(self._hits)
