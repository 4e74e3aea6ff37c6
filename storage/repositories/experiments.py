"""Experiments: by id, the live ones the scheduler drives, all of them for the Admin API."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Experiment
from storage.states import LIVE_EXPERIMENT_STATES


class ExperimentRepository(ABC):
    @abstractmethod
    def add(self, experiment: Experiment) -> None: ...

    @abstractmethod
    def get(self, experiment_id: str) -> Experiment | None: ...

    @abstractmethod
    def all(self) -> list[Experiment]:
        """Every experiment, oldest first."""

    @abstractmethod
    def live_ids(self) -> list[str]:
        """Ids of running or paused experiments, oldest first (the scheduler's work list)."""

    @abstractmethod
    def count_live(self) -> int: ...


class SqlExperimentRepository(ExperimentRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, experiment: Experiment) -> None:
        self._session.add(experiment)

    def get(self, experiment_id: str) -> Experiment | None:
        return self._session.get(Experiment, experiment_id)

    def all(self) -> list[Experiment]:
        return list(self._session.scalars(select(Experiment).order_by(Experiment.created_at)))

    def live_ids(self) -> list[str]:
        return list(
            self._session.scalars(
                select(Experiment.id)
                .where(Experiment.state.in_(LIVE_EXPERIMENT_STATES))
                .order_by(Experiment.created_at)
            )
        )

    def count_live(self) -> int:
        count = self._session.scalar(
            select(func.count(Experiment.id)).where(Experiment.state.in_(LIVE_EXPERIMENT_STATES))
        )
        return int(count or 0)
