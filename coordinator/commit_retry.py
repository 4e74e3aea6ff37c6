"""A round whose commit fails on I/O waits and is retried; anything else fails it (docs/decisions.md 26).

Committing a round writes files (the strategy's accumulator and result in the work folder, the new
version's blobs, fsyncs) and then one SQL transaction. When one of those fails because the disk is
full or the device reported an I/O error, nothing about the round is wrong: its verified updates are
still spooled and its rows still say `aggregating`. So the scheduler keeps the round as it is and
tries again later, with exponential backoff (``commit_retry_initial_seconds`` doubling up to
``commit_retry_max_seconds``), and says why it waits: the round's ``reason`` (shown by
``fedtune admin rounds``), a ``round.commit_retry`` event and a log line.

What counts as transient (``is_transient_io_error``): an ``OSError`` anywhere in the exception's
cause chain (ENOSPC, EDQUOT, EIO, EROFS, EACCES ... the operator can fix all of them), except a
missing file, which no retry brings back; and a database ``OperationalError`` ("database or disk is
full", a dropped PostgreSQL connection). Everything else (a strategy that raises, a version number
already taken) is deterministic and fails the round at once, as before.

The retry book is in memory: a restarted coordinator tries a waiting round at its first tick.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from fedtune.errors import FedtuneError

# A waiting round records a round.commit_retry event on its first failure, when the error changes,
# and at least this often while it keeps failing (its reason and the log say more often).
COMMIT_RETRY_EVENT_EVERY_SECONDS = 600.0
# The error text kept in the round's reason and in the event (an OSError can carry a long path).
MAX_ERROR_CHARS = 300

_NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _cause_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return chain


def is_transient_io_error(err: BaseException) -> bool:
    """True when `err` (or what caused it) is an I/O or database failure that may go away."""
    for item in _cause_chain(err):
        if isinstance(item, _NOT_TRANSIENT):
            return False
        if isinstance(item, (OSError, OperationalError)):
            return True
    return False


def describe_error(err: BaseException) -> str:
    """A one-line, bounded description for the round's reason, the event and the log."""
    raw = err.message if isinstance(err, FedtuneError) else str(err)
    text = " ".join(raw.split()) or type(err).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return text


@dataclass
class RetryDecision:
    attempt: int  # 1 for the first failure
    delay_seconds: float
    announce: bool  # record a round.commit_retry event for this failure

    @property
    def delay_text(self) -> str:
        return f"{round(self.delay_seconds, 1):g} s"


@dataclass
class _Waiting:
    attempts: int
    next_at: float
    last_event_at: float
    last_error: str


class CommitRetries:
    """Per round: how often its commit failed on I/O and when to try next (shared by the round jobs)."""

    def __init__(self, initial_seconds: float, max_seconds: float) -> None:
        self._initial = initial_seconds
        self._max = max(max_seconds, initial_seconds)
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()

    def due(self, round_id: str, now: float) -> bool:
        """Whether the round may be driven now (False while it waits for its next attempt)."""
        with self._lock:
            waiting = self._waiting.get(round_id)
            return waiting is None or now >= waiting.next_at

    def waiting(self, round_id: str) -> bool:
        with self._lock:
            return round_id in self._waiting

    def failed(self, round_id: str, now: float, error: str) -> RetryDecision:
        """Record a transient failure; returns the attempt number, the wait and whether to announce it."""
        with self._lock:
            return self._failed(round_id, now, error)

    def _failed(self, round_id: str, now: float, error: str) -> RetryDecision:
        waiting = self._waiting.get(round_id)
        if waiting is None:
            waiting = self._waiting[round_id] = _Waiting(0, now, float("-inf"), "")
        waiting.attempts += 1
        delay = min(self._max, self._initial * 2.0 ** min(waiting.attempts - 1, 60))
        waiting.next_at = now + delay
        announce = (
            error != waiting.last_error or now - waiting.last_event_at >= COMMIT_RETRY_EVENT_EVERY_SECONDS
        )
        if announce:
            waiting.last_event_at, waiting.last_error = now, error
        return RetryDecision(waiting.attempts, delay, announce)

    def forget(self, round_id: str) -> int:
        """The round committed or failed: drop its record; returns how many failures it had."""
        with self._lock:
            waiting = self._waiting.pop(round_id, None)
        return waiting.attempts if waiting is not None else 0
