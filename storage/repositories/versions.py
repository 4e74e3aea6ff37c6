"""Model versions and the strategies' server state after each round."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import ModelVersion, StrategyState


class VersionRepository(ABC):
    @abstractmethod
    def add(self, version: ModelVersion) -> None: ...

    @abstractmethod
    def get(self, version_id: str) -> ModelVersion | None: ...

    @abstractmethod
    def latest(self, experiment_id: str, *, stage_index: int | None = None) -> ModelVersion | None:
        """The experiment's highest-numbered version (of one stage), or None."""

    @abstractmethod
    def numbered(self, experiment_id: str, version: int) -> ModelVersion | None:
        """The experiment's version with this number."""

    @abstractmethod
    def ordered(self, experiment_id: str | None = None) -> list[ModelVersion]:
        """Versions (of one experiment) by experiment, then number."""

    @abstractmethod
    def add_strategy_state(self, state: StrategyState) -> None: ...

    @abstractmethod
    def strategy_state_before(self, experiment_id: str, stage_index: int, round: int) -> StrategyState | None:
        """The stage's server state saved after its latest round before `round`."""


class SqlVersionRepository(VersionRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, version: ModelVersion) -> None:
        self._session.add(version)

    def get(self, version_id: str) -> ModelVersion | None:
        return self._session.get(ModelVersion, version_id)

    def latest(self, experiment_id: str, *, stage_index: int | None = None) -> ModelVersion | None:
        query = select(ModelVersion).where(ModelVersion.experiment_id == experiment_id)
        if stage_index is not None:
            query = query.where(ModelVersion.stage_index == stage_index)
        return self._session.scalars(query.order_by(ModelVersion.version.desc()).limit(1)).first()

    def numbered(self, experiment_id: str, version: int) -> ModelVersion | None:
        return self._session.scalars(
            select(ModelVersion).where(
                ModelVersion.experiment_id == experiment_id, ModelVersion.version == version
            )
        ).first()

    def ordered(self, experiment_id: str | None = None) -> list[ModelVersion]:
        query = select(ModelVersion)
        if experiment_id is not None:
            query = query.where(ModelVersion.experiment_id == experiment_id)
        return list(self._session.scalars(query.order_by(ModelVersion.experiment_id, ModelVersion.version)))

    def add_strategy_state(self, state: StrategyState) -> None:
        self._session.add(state)

    def strategy_state_before(self, experiment_id: str, stage_index: int, round: int) -> StrategyState | None:
        return self._session.scalars(
            select(StrategyState)
            .where(
                StrategyState.experiment_id == experiment_id,
                StrategyState.stage_index == stage_index,
                StrategyState.round < round,
            )
            .order_by(StrategyState.round.desc())
            .limit(1)
        ).first()
