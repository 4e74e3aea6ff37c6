"""Stopping mid-task: a SIGTERM (or the coordinator cancelling the task) ends training within a step.

The daemon runs each task inside ``interruptible(should_stop)``; every loop that costs more than a
moment (a training step, an evaluation or statistics batch) calls ``check()``, which raises
``TaskAbandoned`` once `should_stop()` is true. A context variable, not a parameter, so that the loops
deep in training and evaluation need no plumbing through every task function; outside a task (scripts,
benchmarks, tests) ``check()`` does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_should_stop: ContextVar[Callable[[], bool] | None] = ContextVar("fedtune_should_stop", default=None)


class TaskAbandoned(Exception):
    """The task was cancelled by the coordinator or the worker is stopping: drop it, report nothing."""


@contextlib.contextmanager
def interruptible(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within the block, ``check()`` raises ``TaskAbandoned`` as soon as `should_stop()` is true."""
    token = _should_stop.set(should_stop)
    try:
        yield
    finally:
        _should_stop.reset(token)


def check() -> None:
    """Raise ``TaskAbandoned`` if the running task should stop now (a no-op outside a task)."""
    should_stop = _should_stop.get()
    if should_stop is not None and should_stop():
        raise TaskAbandoned("stopping")
