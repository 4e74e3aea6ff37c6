"""Experiment lifecycle commands (submit, start, pause, resume, abort): plain service, no gRPC."""

from __future__ import annotations

import logging
from collections.abc import Callable

from coordinator import lifecycle
from coordinator.clock import Clock
from coordinator.strategies.registry import build_strategy
from coordinator.waiting import check_selection_sites_known
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, load_spec_yaml
from storage import models
from storage.uow import UnitOfWork, UowFactory

log = logging.getLogger("fedtune.coordinator.experiments")

SUPPORTED_STAGE_KINDS = {"global", "finetune", "personalize"}


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
    if spec.privacy.clip_norm is not None or spec.privacy.noise_multiplier > 0 or spec.privacy.dp is not None:
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"stages.{index}.strategy.name: {name} sends per-class feature sums, which privacy.clip_norm / "
            "noise_multiplier and privacy.dp do not protect; turn privacy off for this experiment or use "
            "another strategy",
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


def get_experiment_row(uow: UnitOfWork, experiment_id: str) -> models.Experiment:
    row = uow.experiments.get(experiment_id)
    if row is None:
        raise FedtuneError(
            ErrorCode.NOT_FOUND, f"no experiment {experiment_id!r} (see `fedtune admin experiment list`)"
        )
    return row


class ExperimentService:
    def __init__(self, uow_factory: UowFactory, clock: Clock) -> None:
        self._uow_factory = uow_factory
        self._clock = clock

    def submit(self, spec_yaml: str, *, start: bool = False) -> str:
        spec = validate_spec(spec_yaml)
        with self._uow_factory() as uow:
            check_selection_sites_known(uow, spec)  # a site no round can ever have: refuse now
            experiment_id = lifecycle.submit_experiment(uow, spec, spec_yaml, self._clock.now()).id
            uow.commit()
        log.info("experiment submitted", extra={"experiment": experiment_id, "spec_name": spec.name})
        if start:
            self.start(experiment_id)
        return experiment_id

    def _command(
        self, experiment_id: str, move: Callable[[UnitOfWork, models.Experiment, float], bool]
    ) -> None:
        with self._uow_factory() as uow:
            if move(uow, get_experiment_row(uow, experiment_id), self._clock.now()):
                uow.commit()

    def start(self, experiment_id: str) -> None:
        self._command(experiment_id, lifecycle.start_experiment)

    def pause(self, experiment_id: str, reason: str = "") -> None:
        self._command(experiment_id, lambda uow, row, now: lifecycle.pause_experiment(uow, row, reason, now))

    def resume(self, experiment_id: str) -> None:
        self._command(experiment_id, lifecycle.resume_experiment)

    def abort(self, experiment_id: str, reason: str = "") -> list[str]:
        """Cancel live tasks and open rounds; returns the ids of rounds that were open."""
        with self._uow_factory() as uow:
            row = get_experiment_row(uow, experiment_id)
            round_ids = lifecycle.abort_experiment(uow, row, reason, self._clock.now())
            uow.commit()
        return round_ids
