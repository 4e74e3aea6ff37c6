"""The allowed state transitions, as one table, and the one function that writes a state column.

Rows are created in their first state by the lifecycle's constructors (``submit_experiment``,
``open_round``, ``create_task``, ``record_update`` ...); every later change goes through ``move``, which
refuses a transition the table does not list. ``tests/coordinator/test_lifecycle.py`` fails when code
outside ``coordinator/lifecycle/`` writes a state column.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from fedtune.errors import ErrorCode, FedtuneError
from storage.states import (
    ExperimentState,
    RoundState,
    StageState,
    TaskState,
    UpdateState,
    WorkerState,
)

E = ExperimentState
R = RoundState
T = TaskState

TRANSITIONS: dict[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]] = {
    ExperimentState: {
        E.SUBMITTED: frozenset({E.RUNNING, E.ABORTED}),
        E.RUNNING: frozenset({E.PAUSED, E.COMPLETED, E.FAILED, E.ABORTED}),
        E.PAUSED: frozenset({E.RUNNING, E.COMPLETED, E.FAILED, E.ABORTED}),
    },
    StageState: {
        StageState.PENDING: frozenset({StageState.RUNNING}),
        StageState.RUNNING: frozenset({StageState.COMPLETED}),
    },
    RoundState: {
        # open -> collecting: the accumulator is ready, tasks become leasable (no event: internal step)
        R.OPEN: frozenset({R.COLLECTING, R.AGGREGATING, R.FAILED}),
        # collecting -> committed: a personalize round (no aggregation)
        R.COLLECTING: frozenset({R.AGGREGATING, R.COMMITTED, R.FAILED}),
        R.AGGREGATING: frozenset({R.COMMITTED, R.FAILED}),
    },
    TaskState: {
        T.PENDING: frozenset({T.LEASED, T.FAILED, T.CANCELLED}),
        # leased -> pending: the lease expired, or the worker was replaced by a new registration
        T.LEASED: frozenset({T.PENDING, T.DONE, T.FAILED, T.CANCELLED}),
    },
    UpdateState: {
        # verified -> folded: the accumulator holds it (no event: bookkeeping of a rebuildable cache)
        UpdateState.VERIFIED: frozenset({UpdateState.FOLDED}),
    },
    WorkerState: {
        WorkerState.ONLINE: frozenset({WorkerState.OFFLINE}),
        WorkerState.OFFLINE: frozenset({WorkerState.ONLINE}),
    },
}


class HasState(Protocol):
    state: str


def allowed(current: StrEnum, target: StrEnum) -> bool:
    return target in TRANSITIONS[type(target)].get(current, frozenset())


def move(row: HasState, target: StrEnum) -> None:
    """Set `row.state` to `target`; WRONG_STATE if the table does not allow it from the current state."""
    current = type(target)(row.state)
    if not allowed(current, target):
        what = type(row).__name__.lower()
        ident = getattr(row, "id", "")
        raise FedtuneError(ErrorCode.WRONG_STATE, f"{what} {ident} is {current}; it cannot become {target}")
    row.state = target
