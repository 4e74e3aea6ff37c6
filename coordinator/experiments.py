"""Experiment lifecycle commands (submit, start, pause, resume, abort): plain service, no gRPC."""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from coordinator.clock import Clock
from coordinator.notify import Notifier
from coordinator.strategies.registry import build_strategy
from coordinator.waiting import check_selection_sites_known
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, load_spec_yaml
from storage import models
from storage.registry import record_event
from storage.uow import SqlUnitOfWork, UnitOfWorkFactory

log = logging.getLogger("fedtune.coordinator.experiments")

SUPPORTED_STAGE_KINDS = {"global", "finetune", "personalize"}
LIVE_TASK_STATES = ("pending", "leased")
OPEN_ROUND_STATES = ("open", "collecting", "aggregating")


def validate_spec(spec_yaml: str) -> ExperimentSpec:
    """Parse the YAML and every stage's strategy options; INVALID_SPEC names the bad field."""
    spec = load_spec_yaml(spec_yaml)
    _check_stage_order(spec)
    for index, stage in enumerate(spec.stages):
        if stage.kind not in SUPPORTED_STAGE_KINDS:
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"stages.{index}.kind: stage kind {stage.kind!r} is not supported by this coordinator; "
                f"use {sorted(SUPPORTED_STAGE_KINDS)}",
            )
        try:
            strategy = build_strategy(stage.strategy.name, dict(stage.strategy.options))
        except FedtuneError as err:
            raise FedtuneError(err.code, f"stages.{index}.{err.message}") from None
        if "class_statistics" in strategy.client_training_overrides():
            _check_class_statistics_stage(spec, index)
        if stage.selection.sites is not None and len(stage.selection.sites) < stage.selection.min_sites:
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"stages.{index}.selection.min_sites: {stage.selection.min_sites} is more than the "
                f"{len(stage.selection.sites)} sites listed in selection.sites",
            )
    return spec


def _check_class_statistics_stage(spec: ExperimentSpec, index: int) -> None:
    """A strategy whose sites send class statistics (fedncm) needs labels, a finetune stage, and no DP:
    the clip + noise option covers trained weights, not feature sums."""
    name = spec.stages[index].strategy.name
    if spec.task != "sequence-classification" or spec.stages[index].kind != "finetune":
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"stages.{index}.strategy.name: {name} runs in a finetune stage of a sequence-classification "
            "experiment",
        )
    if spec.privacy.clip_norm is not None or spec.privacy.noise_multiplier > 0:
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"stages.{index}.strategy.name: {name} sends per-class feature sums, which privacy.clip_norm / "
            "noise_multiplier do not protect; turn privacy off for this experiment or use another strategy",
        )


def _check_stage_order(spec: ExperimentSpec) -> None:
    """`global` stages come first (they make the base the later stages build on); personalize needs
    an adapter, so it cannot follow a global stage directly."""
    seen_other = False
    for index, stage in enumerate(spec.stages):
        if stage.kind == "global" and seen_other:
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"stages.{index}.kind: a global stage must come before every finetune/personalize stage",
            )
        seen_other = seen_other or stage.kind != "global"
        if stage.kind == "personalize" and index > 0 and spec.stages[index - 1].kind == "global":
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"stages.{index}.kind: a personalize stage needs a finetune stage between it and the "
                "global stage (it tunes the finetuned adapter)",
            )


def get_experiment_row(uow: SqlUnitOfWork, experiment_id: str) -> models.Experiment:
    row = uow.session.get(models.Experiment, experiment_id)
    if row is None:
        raise FedtuneError(
            ErrorCode.NOT_FOUND, f"no experiment {experiment_id!r} (see `fedtune admin experiment list`)"
        )
    return row


def cancel_live_tasks(
    uow: SqlUnitOfWork, *, experiment_id: str | None = None, round_id: str | None = None
) -> int:
    stmt = update(models.Task).where(models.Task.state.in_(LIVE_TASK_STATES))
    if experiment_id is not None:
        stmt = stmt.where(models.Task.experiment_id == experiment_id)
    if round_id is not None:
        stmt = stmt.where(models.Task.round_id == round_id)
    result = uow.session.execute(stmt.values(state="cancelled", lease_expires_at=None))
    return int(getattr(result, "rowcount", 0) or 0)


class ExperimentService:
    def __init__(self, uow_factory: UnitOfWorkFactory, clock: Clock, notifier: Notifier) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._notifier = notifier

    def submit(self, spec_yaml: str, *, start: bool = False) -> str:
        spec = validate_spec(spec_yaml)
        experiment_id = models.new_id("exp")
        now = self._clock.now()
        with self._uow_factory() as uow:
            check_selection_sites_known(uow, spec)  # a site no round can ever have: refuse now
            uow.session.add(
                models.Experiment(
                    id=experiment_id,
                    name=spec.name,
                    spec_yaml=spec_yaml,
                    spec_json=spec.to_json(),
                    state="submitted",
                    created_at=now,
                    updated_at=now,
                )
            )
            uow.flush()
            for index, stage in enumerate(spec.stages):
                uow.session.add(
                    models.Stage(
                        experiment_id=experiment_id,
                        stage_index=index,
                        name=stage.stage_name,
                        kind=stage.kind,
                        rounds_total=stage.rounds,
                    )
                )
            record_event(uow, "experiment.submitted", f"experiment {spec.name} submitted", experiment_id)
            uow.commit()
        log.info("experiment submitted", extra={"experiment": experiment_id, "spec_name": spec.name})
        if start:
            self.start(experiment_id)
        return experiment_id

    def _transition(
        self, experiment_id: str, allowed: tuple[str, ...], target: str, event: str, reason: str
    ) -> None:
        with self._uow_factory() as uow:
            row = get_experiment_row(uow, experiment_id)
            if row.state == target:
                return  # idempotent
            if row.state not in allowed:
                raise FedtuneError(
                    ErrorCode.WRONG_STATE,
                    f"experiment {experiment_id} is {row.state}; "
                    f"it must be one of {list(allowed)} to become {target}",
                )
            row.state = target
            row.updated_at = self._clock.now()
            message = f"experiment {row.name} {event}" + (f": {reason}" if reason else "")
            record_event(
                uow, f"experiment.{event}", message, experiment_id, {"reason": reason} if reason else None
            )
            uow.commit()
        self._notifier.notify(all_sites=True)  # tasks of a running or paused experiment are leasable

    def start(self, experiment_id: str) -> None:
        self._transition(experiment_id, ("submitted",), "running", "started", "")

    def pause(self, experiment_id: str, reason: str = "") -> None:
        self._transition(experiment_id, ("running",), "paused", "paused", reason)

    def resume(self, experiment_id: str) -> None:
        self._transition(experiment_id, ("paused",), "running", "resumed", "")

    def abort(self, experiment_id: str, reason: str = "") -> list[str]:
        """Cancel live tasks and open rounds; returns the ids of rounds that were open."""
        now = self._clock.now()
        with self._uow_factory() as uow:
            row = get_experiment_row(uow, experiment_id)
            if row.state == "aborted":
                return []
            if row.state in ("completed", "failed"):
                raise FedtuneError(
                    ErrorCode.WRONG_STATE, f"experiment {experiment_id} is already {row.state}"
                )
            cancel_live_tasks(uow, experiment_id=experiment_id)
            open_rounds = uow.session.scalars(
                select(models.Round).where(
                    models.Round.experiment_id == experiment_id, models.Round.state.in_(OPEN_ROUND_STATES)
                )
            ).all()
            for rnd in open_rounds:
                rnd.state, rnd.closed_at, rnd.reason = "failed", now, "experiment aborted"
            row.state, row.updated_at = "aborted", now
            row.error = f"aborted: {reason}" if reason else "aborted"
            record_event(
                uow, "experiment.aborted", f"experiment {row.name} aborted", experiment_id, {"reason": reason}
            )
            uow.commit()
            round_ids = [r.id for r in open_rounds]
        self._notifier.notify()
        return round_ids
