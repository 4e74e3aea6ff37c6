"""An experiment's stages: one row per stage of its spec, made at submit."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy import select
from sqlalchemy.orm import Session

from fedtune.errors import ErrorCode, FedtuneError
from storage.models import Experiment, Stage
from storage.states import StageState


def _missing(experiment_id: str, index: int) -> FedtuneError:
    return FedtuneError(ErrorCode.STORAGE, f"experiment {experiment_id!r} has no stage {index}")


class StageRepository(ABC):
    @abstractmethod
    def add(self, stage: Stage) -> None: ...

    @abstractmethod
    def find(self, experiment_id: str, index: int) -> Stage | None: ...

    def get(self, experiment_id: str, index: int) -> Stage:
        """The stage row; STORAGE error if the experiment has no such stage (rows are made at submit)."""
        stage = self.find(experiment_id, index)
        if stage is None:
            raise _missing(experiment_id, index)
        return stage

    def current(self, experiment: Experiment) -> Stage | None:
        """The stage the experiment is in (None only for a damaged registry)."""
        return self.find(experiment.id, experiment.current_stage_index)

    @abstractmethod
    def for_experiment(self, experiment_id: str) -> list[Stage]:
        """The experiment's stages, in order."""

    def last_index(self, experiment_id: str) -> int:
        stages = self.for_experiment(experiment_id)
        return stages[-1].stage_index if stages else 0

    def latest_global_output(self, experiment_id: str, before_index: int) -> str | None:
        """The output version of the last completed global stage before `before_index`, or None."""
        for stage in reversed(self.for_experiment(experiment_id)):
            if (
                stage.stage_index < before_index
                and stage.kind == "global"
                and stage.state == StageState.COMPLETED
            ):
                return stage.output_version_id
        return None


class SqlStageRepository(StageRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, stage: Stage) -> None:
        self._session.add(stage)

    def find(self, experiment_id: str, index: int) -> Stage | None:
        return self._session.scalars(
            select(Stage).where(Stage.experiment_id == experiment_id, Stage.stage_index == index)
        ).first()

    def for_experiment(self, experiment_id: str) -> list[Stage]:
        return list(
            self._session.scalars(
                select(Stage).where(Stage.experiment_id == experiment_id).order_by(Stage.stage_index)
            )
        )
