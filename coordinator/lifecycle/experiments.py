"""Experiments and their stages: submit, start, pause, resume, abort, fail, complete."""

from __future__ import annotations

from coordinator.lifecycle.table import move
from coordinator.lifecycle.tasks import cancel_live_tasks
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.sanitize import ERROR_TEXT_LIMIT, public_text
from fedtune.spec import ExperimentSpec
from storage import models
from storage.registry import record_event
from storage.states import ENDED_EXPERIMENT_STATES, ExperimentState, RoundState, StageState
from storage.uow import UnitOfWork

E = ExperimentState


def submit_experiment(uow: UnitOfWork, spec: ExperimentSpec, spec_yaml: str, now: float) -> models.Experiment:
    """A submitted experiment with one pending row per stage."""
    row = models.Experiment(
        id=models.new_id("exp"),
        name=spec.name,
        spec_yaml=spec_yaml,
        spec_json=spec.to_json(),
        state=E.SUBMITTED,
        created_at=now,
        updated_at=now,
    )
    uow.experiments.add(row)
    uow.flush()
    for index, stage in enumerate(spec.stages):
        uow.stages.add(
            models.Stage(
                experiment_id=row.id,
                stage_index=index,
                name=stage.stage_name,
                kind=stage.kind,
                state=StageState.PENDING,
                rounds_total=stage.rounds,
            )
        )
    record_event(uow, "experiment.submitted", f"experiment {spec.name} submitted", row.id)
    return row


def _command(
    uow: UnitOfWork,
    row: models.Experiment,
    sources: tuple[E, ...],
    target: E,
    event: str,
    reason: str,
    now: float,
) -> bool:
    """An operator's command: False if already there (idempotent), WRONG_STATE from elsewhere."""
    if row.state == target:
        return False
    if row.state not in sources:
        raise FedtuneError(
            ErrorCode.WRONG_STATE,
            f"experiment {row.id} is {row.state}; "
            f"it must be one of {[s.value for s in sources]} to become {target}",
        )
    move(row, target)
    row.updated_at = now
    message = f"experiment {row.name} {event}" + (f": {reason}" if reason else "")
    record_event(uow, f"experiment.{event}", message, row.id, {"reason": reason} if reason else None)
    uow.wake(all_sites=True)  # tasks of a running or paused experiment are leasable
    return True


def start_experiment(uow: UnitOfWork, row: models.Experiment, now: float) -> bool:
    return _command(uow, row, (E.SUBMITTED,), E.RUNNING, "started", "", now)


def pause_experiment(uow: UnitOfWork, row: models.Experiment, reason: str, now: float) -> bool:
    return _command(uow, row, (E.RUNNING,), E.PAUSED, "paused", reason, now)


def resume_experiment(uow: UnitOfWork, row: models.Experiment, now: float) -> bool:
    return _command(uow, row, (E.PAUSED,), E.RUNNING, "resumed", "", now)


def abort_experiment(uow: UnitOfWork, row: models.Experiment, reason: str, now: float) -> list[str]:
    """Cancel live tasks, fail open rounds, end the experiment; returns the ids of the open rounds."""
    if row.state == E.ABORTED:
        return []
    if row.state in (E.COMPLETED, E.FAILED):
        raise FedtuneError(ErrorCode.WRONG_STATE, f"experiment {row.id} is already {row.state}")
    cancel_live_tasks(uow, now, experiment_id=row.id)
    open_rounds = uow.rounds.open_for_experiment(row.id)
    for rnd in open_rounds:
        move(rnd, RoundState.FAILED)
        rnd.closed_at, rnd.reason = now, "experiment aborted"
    move(row, E.ABORTED)
    row.updated_at = now
    row.error = f"aborted: {reason}" if reason else "aborted"
    record_event(uow, "experiment.aborted", f"experiment {row.name} aborted", row.id, {"reason": reason})
    return [rnd.id for rnd in open_rounds]


def fail_experiment(uow: UnitOfWork, experiment_id: str, reason: str, now: float) -> None:
    """The experiment failed (a round or its initialisation did): its live tasks are cancelled."""
    row = uow.experiments.get(experiment_id)
    assert row is not None
    if row.state in ENDED_EXPERIMENT_STATES:
        return
    reason = public_text(reason, ERROR_TEXT_LIMIT)  # may quote a site's task error
    move(row, E.FAILED)
    row.error, row.updated_at = reason, now
    cancel_live_tasks(uow, now, experiment_id=experiment_id)
    record_event(
        uow, "experiment.failed", f"experiment {row.name} failed: {reason}", experiment_id, {"reason": reason}
    )


def complete_experiment(
    uow: UnitOfWork, row: models.Experiment, output_version_id: str | None, now: float
) -> None:
    if row.state not in (E.RUNNING, E.PAUSED):
        return
    move(row, E.COMPLETED)
    row.updated_at = now
    record_event(
        uow,
        "experiment.completed",
        f"experiment {row.name} completed",
        row.id,
        {"version_id": output_version_id or ""},
    )


PRIVACY_BUDGET_EVENT = "privacy.budget_spent"


def end_on_privacy_budget(
    uow: UnitOfWork, row: models.Experiment, reason: str, output_version_id: str | None, now: float
) -> None:
    """The next round would pass privacy.dp.target_epsilon (decision 36): the running stage completes
    with the latest version, later stages do not run, the experiment completes, and an event says why."""
    stage = uow.stages.current(row)
    if stage is not None and stage.state == StageState.RUNNING:
        complete_stage(uow, stage, output_version_id, now)
    record_event(
        uow, PRIVACY_BUDGET_EVENT, f"experiment {row.name} stops: {reason}", row.id, {"reason": reason}
    )
    complete_experiment(uow, row, output_version_id, now)


def start_stage(uow: UnitOfWork, stage: models.Stage, now: float) -> None:
    """pending -> running at the stage's first round (no-op later)."""
    if stage.state != StageState.PENDING:
        return
    move(stage, StageState.RUNNING)
    stage.started_at = now
    record_event(
        uow,
        "stage.started",
        f"stage {stage.name} ({stage.kind}) started",
        stage.experiment_id,
        {"stage": stage.name, "stage_index": stage.stage_index},
    )


def complete_stage(uow: UnitOfWork, stage: models.Stage, output_version_id: str | None, now: float) -> None:
    move(stage, StageState.COMPLETED)
    stage.finished_at, stage.output_version_id = now, output_version_id
    record_event(
        uow,
        "stage.completed",
        f"stage {stage.name} ({stage.kind}) completed",
        stage.experiment_id,
        {"stage": stage.name, "stage_index": stage.stage_index, "version_id": output_version_id or ""},
    )
