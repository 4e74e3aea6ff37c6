"""Wake-ups between threads and the gRPC event loop.

Two audiences, so that one site's news does not wake a thousand idle sites:
- the scheduler loop and admin event watchers wait on a *generation* (any change moves it);
- a site's long-polling PullTask waits on its own wake-up, which moves only when that site may
  have a new leasable task (``notify(sites=[...])``) or when every site may (``notify(all_sites=True)``:
  an experiment starts or resumes).

A generation counter avoids lost wake-ups for thread waiters: a waiter remembers the generation it
saw and returns as soon as it changes (or the timeout passes, or the notifier is closed at shutdown).
A long-poll registers its wake-up *before* it looks for a task, so a task made in between still wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Iterator


class Notifier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False
        # site id -> the asyncio events of that site's waiting long-polls, with their loops
        self._site_waiters: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def notify(self, sites: Iterable[int] = (), *, all_sites: bool = False) -> None:
        """Wake the scheduler and watchers; also the long-polls of `sites` (of every site if `all_sites`)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            if all_sites:
                targets = [w for waiters in self._site_waiters.values() for w in waiters]
            else:
                targets = [w for site in set(sites) for w in self._site_waiters.get(site, ())]
        _wake(targets)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._generation += 1
            self._cond.notify_all()
            targets = [w for waiters in self._site_waiters.values() for w in waiters]
        _wake(targets)

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

    @contextlib.contextmanager
    def site_wakeup(self, site_id: int) -> Iterator[asyncio.Event]:
        """An asyncio event (of the running loop) set whenever `site_id` may have a new task."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            self._site_waiters.setdefault(site_id, set()).add(entry)
            if self._closed:
                entry[1].set()
        try:
            yield entry[1]
        finally:
            with self._cond:
                waiters = self._site_waiters.get(site_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._site_waiters[site_id]

    def waiting_sites(self) -> int:
        """How many long-polls wait right now (for metrics and tests)."""
        with self._cond:
            return sum(len(w) for w in self._site_waiters.values())


def _wake(targets: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
    for loop, event in targets:
        with contextlib.suppress(RuntimeError):  # the loop already closed at shutdown
            loop.call_soon_threadsafe(event.set)
