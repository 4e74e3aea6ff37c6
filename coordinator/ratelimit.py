"""In-memory sliding-window counters: failed authentications per (peer, site), registrations per site.

A counter remembers the times of at most `limit` recent hits per key, and at most `max_keys` keys
(the oldest key is forgotten first), so a flood of distinct keys costs bounded memory. Counts live
in this process only: a restart forgets them, which costs an attacker nothing it did not have.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

DEFAULT_MAX_KEYS = 10_000


class SlidingWindow:
    """At most `limit` hits per key in any `window_seconds`; `retry_after` says when the next is allowed."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_seconds <= 0 or max_keys < 1:
            raise ValueError("limit, window_seconds and max_keys must be positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self._max_keys = max_keys
        self._now = now
        self._hits: OrderedDict[Hashable, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: Hashable, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window_seconds:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: Hashable) -> float:
        """0 when `key` may go on; else the seconds until its oldest hit leaves the window."""
        with self._lock:
            now = self._now()
            hits = self._recent(key, now)
            if hits is None or len(hits) < self.limit:
                return 0.0
            return max(0.0, hits[0] + self.window_seconds - now)

    def _add(self, key: Hashable, hits: deque[float] | None, now: float) -> int:
        if hits is None:
            hits = self._hits[key] = deque(maxlen=self.limit)
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
        hits.append(now)
        return len(hits)

    def hit(self, key: Hashable) -> int:
        """Count one hit of `key`; its hits now in the window (a key keeps only its latest `limit`)."""
        with self._lock:
            now = self._now()
            return self._add(key, self._recent(key, now), now)

    def try_hit(self, key: Hashable) -> bool:
        """Count a hit and say True if `key` was under its limit; False (nothing counted) otherwise."""
        with self._lock:
            now = self._now()
            hits = self._recent(key, now)
            if hits is not None and len(hits) >= self.limit:
                return False
            self._add(key, hits, now)
            return True

    def clear(self, key: Hashable) -> None:
        with self._lock:
            self._hits.pop(key, None)
