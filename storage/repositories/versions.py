"""Model versions and the strategies' server state after each round."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.models import ModelVersion, StrategyState, Update


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

    @abstractmethod
    def prune_strategy_states(self, *, dry_run: bool = False) -> int:
        """Delete each stage's server states but its newest (the only one a later round reads);
        how many (would) go."""

    @abstractmethod
    def referenced_blob_digests(self) -> set[str]:
        """Every digest a row names and needs: versions not pruned (tensors and side files), strategy
        states, update side files. What a blob collector must keep."""


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

    def prune_strategy_states(self, *, dry_run: bool = False) -> int:
        rows = self._session.execute(
            select(
                StrategyState.id, StrategyState.experiment_id, StrategyState.stage_index, StrategyState.round
            )
        ).all()
        stale = _older_states([(row[0], (row[1], row[2]), row[3]) for row in rows])
        if stale and not dry_run:
            self._session.execute(
                delete(StrategyState)
                .where(StrategyState.id.in_(stale))
                .execution_options(synchronize_session=False)
            )
        return len(stale)

    def referenced_blob_digests(self) -> set[str]:
        digests: set[str] = set()
        kept = select(ModelVersion.blob_digest, ModelVersion.files).where(ModelVersion.pruned_at.is_(None))
        for blob_digest, files in self._session.execute(kept):
            digests.add(blob_digest)
            digests.update(str(d) for d in (files or {}).values())
        digests.update(d for d in self._session.scalars(select(StrategyState.blob_digest)) if d)
        for update_files in self._session.scalars(select(Update.files)):
            digests.update(str(d) for d in (update_files or {}).values())
        return digests

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


def _older_states(rows: list[tuple[int, tuple[str, int], int]]) -> list[int]:
    """Ids of (id, (experiment, stage), round) rows that are not their stage's newest."""
    newest: dict[tuple[str, int], tuple[int, int]] = {}
    for state_id, key, number in rows:
        if key not in newest or (number, state_id) > newest[key]:
            newest[key] = (number, state_id)
    keep = {state_id for _, state_id in newest.values()}
    return sorted(state_id for state_id, _, _ in rows if state_id not in keep)
