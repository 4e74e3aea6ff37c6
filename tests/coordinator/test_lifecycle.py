"""The lifecycle is the only writer of state columns, and its table is the only source of transitions."""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

import pytest

from coordinator import lifecycle
from coordinator.lifecycle.table import TRANSITIONS
from fedtune.errors import ErrorCode, FedtuneError
from storage import models
from storage.states import (
    ExperimentState,
    RoundState,
    StageState,
    TaskState,
    UpdateState,
    VersionKind,
    WorkerState,
)

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("coordinator", "storage")
LIFECYCLE = ROOT / "coordinator" / "lifecycle"
# The repositories' compare-and-set (a conditional UPDATE: one lease per task under concurrency) writes
# the state the lifecycle passes in; nothing else outside the lifecycle may.
COMPARE_AND_SET = "swap_state"
# The state each kind of row is created in (by the lifecycle's constructors).
INITIAL_STATES: dict[type[StrEnum], set[StrEnum]] = {
    ExperimentState: {ExperimentState.SUBMITTED},
    StageState: {StageState.PENDING},
    RoundState: {RoundState.OPEN, RoundState.COLLECTING},
    TaskState: {TaskState.PENDING},
    UpdateState: {UpdateState.VERIFIED, UpdateState.FOLDED, UpdateState.REJECTED},
    WorkerState: {WorkerState.ONLINE},
}


# Calls whose `state=` writes a row: a registry model made with its state, or an UPDATE's values.
ROW_MAKERS = {mapper.class_.__name__ for mapper in models.Base.registry.mappers} | {"values"}


def _writes_rows(call: ast.Call) -> bool:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in ROW_MAKERS


def state_writes(source: str) -> list[int]:
    """Line numbers of state writes: `x.state = ...`, a `state=` keyword or `{"state": ...}` argument
    of a model's constructor or of `.values(...)`, `setattr(x, "state", ...)`; writes inside a function
    named COMPARE_AND_SET are left out. (A read model such as `RoundRecord(state=...)` is no write.)"""
    tree = ast.parse(source)
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == COMPARE_AND_SET:
            allowed.update(getattr(n, "lineno", 0) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in flat):
            found.append(getattr(node, "lineno", 0))
        if isinstance(node, ast.Call) and _writes_rows(node):
            if any(k.arg == "state" for k in node.keywords):
                found.append(node.lineno)
            for arg in node.args:
                if isinstance(arg, ast.Dict) and any(
                    isinstance(k, ast.Constant) and k.value == "state" for k in arg.keys
                ):
                    found.append(node.lineno)
        if isinstance(node, ast.Call):
            if (
                isinstance(node.func, ast.Name)
                and node.func.id == "setattr"
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == "state"
            ):
                found.append(node.lineno)
    return sorted(line for line in found if line not in allowed)


def test_only_the_lifecycle_writes_a_state_column() -> None:
    # Prepare
    files = [p for top in SCANNED for p in (ROOT / top).rglob("*.py") if LIFECYCLE not in p.parents]

    # Execute
    offenders = [
        f"{path.relative_to(ROOT)}:{line}" for path in files for line in state_writes(path.read_text())
    ]

    # Assert
    assert files and offenders == [], (
        "a state column is written outside coordinator/lifecycle/ (add or use a transition there): "
        + ", ".join(offenders)
    )


@pytest.mark.parametrize(
    "snippet",
    [
        "task.state = 'done'",
        "rnd.state, rnd.closed_at = 'failed', now",
        "session.execute(update(Task).values(state='cancelled'))",
        "models.Task(id='t', state='pending')",
        "Round(id='r', state='open')",
        "stmt.values({'state': 'leased'})",
        "setattr(task, 'state', 'done')",
    ],
)
def test_the_scan_catches_a_bare_state_write(snippet: str) -> None:
    assert state_writes(f"def f():\n    {snippet}\n") == [2]


def test_the_scan_leaves_reads_and_compare_and_set_alone() -> None:
    source = (
        "def g(task):\n    return task.state == 'done', RoundRecord(state=task.state)\n"
        "def swap_state(task):\n    update(Task).values(state=target)\n"
    )
    assert state_writes(source) == []


def test_no_coordinator_module_touches_a_session() -> None:
    # Prepare / Execute: any attribute `.session` (uow.session, self._session is a Name-attr too)
    offenders = []
    for path in (ROOT / "coordinator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("session", "_session"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")

    # Assert
    assert offenders == [], "use the unit of work's repositories: " + ", ".join(offenders)


def test_every_declared_state_is_created_or_reached() -> None:
    for kind, table in TRANSITIONS.items():
        reached = INITIAL_STATES[kind] | {target for targets in table.values() for target in targets}
        assert set(kind) == reached, f"{kind.__name__}: declared but never used: {set(kind) - reached}"


def test_the_unused_states_are_gone() -> None:
    assert "expired" not in {s.value for s in TaskState}
    assert "initializing" not in {s.value for s in ExperimentState}
    assert [k.value for k in VersionKind] == ["adapter"]


def test_move_refuses_a_transition_the_table_does_not_list() -> None:
    # Prepare
    rnd = models.Round(id="round-1", state=RoundState.COMMITTED)

    # Execute
    with pytest.raises(FedtuneError) as err:
        lifecycle.move(rnd, RoundState.COLLECTING)

    # Assert
    assert err.value.code is ErrorCode.WRONG_STATE and "round round-1 is committed" in err.value.message
    assert rnd.state == RoundState.COMMITTED


def test_states_keep_their_column_values() -> None:
    assert str.__eq__(TaskState.LEASED, "leased") and f"{RoundState.AGGREGATING}" == "aggregating"
