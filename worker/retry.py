"""The worker's call policy: which gRPC statuses are transient, backoff delays, and the errors raised.

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED "busy") are retried with
exponential backoff and full jitter; everything else becomes an ``RpcFailure`` carrying the server's
status and message. ``Stopped`` ends a wait when the worker stops or the task is cancelled.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# RESOURCE_EXHAUSTED means "busy, retry" (the coordinator's message starts "busy:", or grpc's own
# concurrency limit) or "too large" ("too_large:", final). Only the first is worth a retry.
FINAL_EXHAUSTED_PREFIX = "too_large:"


def is_transient(code: grpc.StatusCode, details: str) -> bool:
    """Whether a failed call is worth retrying with backoff."""
    if code in RETRYABLE:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and not details.startswith(FINAL_EXHAUSTED_PREFIX)
UNARY_TIMEOUT_S = 30.0  # deadline of one unary call (streams run without one)


class RpcFailure(Exception):
    """A call the coordinator answered with a non-retryable status (or one that was interrupted)."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


class Stopped(Exception):
    """The worker is stopping (or the task was cancelled) while a call was waiting to retry."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: wait uniform(0, min(cap, base * 2**attempt))."""

    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    attempt: int = 0
    rng: Callable[[], float] = random.random

    def next_delay(self) -> float:
        ceiling = min(self.cap_seconds, self.base_seconds * float(2 ** min(self.attempt, 30)))
        self.attempt += 1
        return max(0.05, ceiling * self.rng())

    def reset(self) -> None:
        self.attempt = 0


def rpc_status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The (code, details) of a failed call; UNKNOWN when the error carries none."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return code or grpc.StatusCode.UNKNOWN, details or ""


def is_stopping(stop_event: threading.Event, cancel: threading.Event | None) -> bool:
    return stop_event.is_set() or (cancel is not None and cancel.is_set())


def sleep_unless_stopped(seconds: float, stop_event: threading.Event, cancel: threading.Event | None) -> None:
    """Sleep `seconds`, checking every 0.1 s; raises `Stopped` as soon as either event is set."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if is_stopping(stop_event, cancel):
            raise Stopped("stopping")
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


__all__ = [
    "RETRYABLE",
    "is_transient",
    "UNARY_TIMEOUT_S",
    "Backoff",
    "RpcFailure",
    "Stopped",
    "is_stopping",
    "rpc_status",
    "sleep_unless_stopped",
]
