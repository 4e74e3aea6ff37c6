"""Rounds and their updates: open, collect, aggregate, commit or fail; an update accepted or rejected."""

from __future__ import annotations

from typing import Any

from coordinator.lifecycle.experiments import start_stage
from coordinator.lifecycle.table import move
from coordinator.lifecycle.tasks import cancel_live_tasks, create_task
from storage import models
from storage.registry import record_event
from storage.states import CLOSED_ROUND_STATES, RoundState, UpdateState
from storage.uow import UnitOfWork


def open_round(
    uow: UnitOfWork,
    *,
    experiment: models.Experiment,
    stage: models.Stage,
    number: int,
    base_version_id: str,
    sites: list[models.Site],
    min_updates: int,
    deadline: float,
    now: float,
    secure_aggregation: bool = False,
) -> models.Round:
    """A new round with one task per selected site. A personalize round has no accumulator to start,
    so it collects at once; others collect once their accumulator is ready (``start_collecting``).
    With `secure_aggregation` no task is made here: the caller opens the protocol's first step
    (``coordinator.secagg.phases.open_secagg_round``)."""
    personalize = stage.kind == "personalize"
    names = sorted(site.name for site in sites)
    rnd = models.Round(
        id=models.new_id("round"),
        experiment_id=experiment.id,
        stage_index=stage.stage_index,
        round=number,
        state=RoundState.COLLECTING if personalize else RoundState.OPEN,
        base_version_id=base_version_id,
        selected_sites=names,
        min_updates=min_updates,
        opened_at=now,
        deadline_at=deadline,
    )
    uow.rounds.add(rnd)
    uow.flush()
    for site in [] if secure_aggregation else sites:
        create_task(
            uow,
            experiment_id=experiment.id,
            round_id=rnd.id,
            site_id=site.id,
            kind="personalize" if personalize else "train",
            stage_index=stage.stage_index,
            model_version_id=base_version_id,
            deadline=deadline,
            now=now,
        )
    start_stage(uow, stage, now)
    experiment.current_round, experiment.updated_at = number, now
    record_event(
        uow,
        "round.opened",
        f"{stage.name} round {number} opened for {names}",
        experiment.id,
        {"round_id": rnd.id, "round": number, "sites": names, "deadline_unix": deadline},
    )
    return rnd


def start_collecting(uow: UnitOfWork, rnd: models.Round) -> None:
    """open -> collecting: the round's tasks become leasable, so their sites' long-polls wake."""
    move(rnd, RoundState.COLLECTING)
    uow.wake(sites=uow.tasks.site_ids_in_round(rnd.id))


def begin_aggregating(uow: UnitOfWork, rnd: models.Round) -> None:
    """-> aggregating: no update is accepted any more; the commit runs (and may be retried)."""
    if rnd.state != RoundState.AGGREGATING:
        move(rnd, RoundState.AGGREGATING)
    uow.wake()


def commit_round(
    uow: UnitOfWork,
    rnd: models.Round,
    now: float,
    *,
    metrics: dict[str, float],
    message: str,
    data: dict[str, Any],
    version_id: str | None = None,
) -> None:
    """-> committed (with its new version; none for a personalize round); live tasks are cancelled."""
    move(rnd, RoundState.COMMITTED)
    rnd.closed_at, rnd.metrics, rnd.model_version_id = now, metrics, version_id
    rnd.reason = ""  # a commit that waited on I/O said why in the reason; it is done now
    cancel_live_tasks(uow, now, round_id=rnd.id)
    record_event(
        uow, "round.committed", message, rnd.experiment_id, {"round_id": rnd.id, "round": rnd.round, **data}
    )


def fail_round(uow: UnitOfWork, rnd: models.Round, reason: str, now: float) -> bool:
    """-> failed, its live tasks cancelled; False if it was closed already."""
    if rnd.state in CLOSED_ROUND_STATES:
        return False
    move(rnd, RoundState.FAILED)
    rnd.closed_at, rnd.reason = now, reason
    cancel_live_tasks(uow, now, round_id=rnd.id)
    record_event(
        uow,
        "round.failed",
        f"round {rnd.round} failed: {reason}",
        rnd.experiment_id,
        {"round_id": rnd.id, "round": rnd.round, "reason": reason},
    )
    return True


def record_update(
    uow: UnitOfWork,
    *,
    task: models.Task,
    site: str,
    round_number: int,
    state: UpdateState,
    now: float,
    update_id: str | None = None,
    weight: float = 0.0,
    why: str = "",
    **fields: Any,
) -> models.Update:
    """The Update row of a pushed, verified update: `folded` (accepted into the accumulator) or
    `rejected` (the strategy refused it, `why`; it is never folded and the round goes on without it).
    (`verified` rows, complete but not yet folded, were written before decision 31; a catch-up folds them.)
    """
    update = models.Update(
        id=update_id or models.new_id("upd"),
        task_id=task.id,
        round_id=task.round_id,
        site_id=task.site_id,
        state=state,
        weight=weight,
        created_at=now,
        folded_at=now if state == UpdateState.FOLDED else None,
        **fields,
    )
    uow.updates.add(update)
    if state == UpdateState.REJECTED:
        record_event(
            uow,
            "update.rejected",
            f"update from {site} rejected: {why}",
            task.experiment_id,
            {"task_id": task.id, "update_id": update.id, "reason": why},
        )
    else:
        record_event(
            uow,
            "update.accepted",
            f"update from {site} for round {round_number}",
            task.experiment_id,
            {"task_id": task.id, "update_id": update.id, "num_examples": update.num_examples},
        )
    return update


def mark_folded(update: models.Update, weight: float, now: float) -> None:
    """verified -> folded (a catch-up after a restart refolds folded ones again: only the weight moves)."""
    if update.state == UpdateState.VERIFIED:
        move(update, UpdateState.FOLDED)
        update.folded_at = now
    update.weight = weight
