"""A reader thread that keeps the next input window ready while the current one is tokenized."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class _Prefetched(Iterator[T]):
    """Run `iterator` in a thread, `depth` items ahead, from construction on: reading the next
    window (native kernels, GIL released) overlaps tokenizing and writing the current one, and the
    first window is read while the engine is chosen. Errors re-raise in `__next__`; `close` (also
    at the end) stops the thread."""

    def __init__(self, iterator: Iterator[T], depth: int = 1) -> None:
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = object()
        self._iterator = iterator
        self._thread = threading.Thread(target=self._produce, name="lmfast-prepare-reader", daemon=True)
        self._thread.start()

    def _offer(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._iterator:
                if not self._offer(item):
                    return
            self._offer(self._done)
        except BaseException as error:  # handed to the consumer, raised there
            self._offer(_Failure(error))

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._items.get()
        if item is self._done:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Failure:
    error: BaseException
