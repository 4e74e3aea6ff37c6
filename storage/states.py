"""The values a state column may hold, and the groups of them that queries ask about.

The enums are ``str``-valued, so a column keeps the plain strings it always held (no migration) and a
row read back compares equal to its enum member. Which moves between these states are allowed, and
what each move records, is the coordinator's lifecycle (``coordinator/lifecycle.py``): the only code
that writes a state column (``tests/coordinator/test_lifecycle.py`` enforces it).
"""

from __future__ import annotations

from enum import StrEnum


class ExperimentState(StrEnum):
    SUBMITTED = "submitted"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class StageState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"


class RoundState(StrEnum):
    OPEN = "open"  # tasks made, accumulator not started: tasks are not leasable yet
    COLLECTING = "collecting"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"
    FAILED = "failed"


class TaskState(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class UpdateState(StrEnum):
    VERIFIED = "verified"  # complete, sha256-checked, accepted by the strategy; not in the accumulator yet
    FOLDED = "folded"
    REJECTED = "rejected"  # the strategy refused it: never folded, the round goes on without it


class WorkerState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class VersionKind(StrEnum):
    ADAPTER = "adapter"  # the only kind a coordinator stores (personalized adapters stay at the sites)


# Experiments whose tasks may be leased and whose rounds the scheduler drives.
LIVE_EXPERIMENT_STATES = (ExperimentState.RUNNING, ExperimentState.PAUSED)
ENDED_EXPERIMENT_STATES = (ExperimentState.COMPLETED, ExperimentState.FAILED, ExperimentState.ABORTED)
OPEN_ROUND_STATES = (RoundState.OPEN, RoundState.COLLECTING, RoundState.AGGREGATING)
CLOSED_ROUND_STATES = (RoundState.COMMITTED, RoundState.FAILED)
LIVE_TASK_STATES = (TaskState.PENDING, TaskState.LEASED)
# Updates the round's accumulator holds (or will hold after a catch-up).
FOLDABLE_UPDATE_STATES = (UpdateState.VERIFIED, UpdateState.FOLDED)
