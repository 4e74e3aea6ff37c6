"""Blocking work (SQL, disk) from the asyncio gRPC server: a bounded thread pool per kind of caller.

The event loop holds every open call; a thread is taken only for the moment a call does database or
disk work, so an idle long-poll or a silent stream costs no thread. Worker calls and Admin calls get
separate pools, so a flood of site traffic cannot delay an operator's command.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_DONE = object()


class BlockingPool:
    def __init__(self, threads: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self.threads = threads

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on a pool thread, awaited from the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def iterate(self, items: Iterator[T]) -> AsyncIterator[T]:
        """Each next item of a blocking iterator, read on a pool thread; the iterator is closed at the end."""
        try:
            while True:
                item = await self.run(next, items, _DONE)
                if item is _DONE:
                    return
                yield item  # type: ignore[misc]
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                await self.run(close)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
