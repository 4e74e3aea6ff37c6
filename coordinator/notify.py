"""Wake-ups between threads: long-polling PullTask calls and the scheduler loop wait on a Notifier.

A generation counter avoids lost wake-ups: a waiter remembers the generation it saw and returns
as soon as it changes (or the timeout passes, or the notifier is closed at shutdown).
"""

from __future__ import annotations

import threading
import time


class Notifier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen_generation: int, timeout: float) -> int:
        """Block until the generation moves past `seen_generation` or `timeout`; returns the current one."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._generation == seen_generation and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._generation
