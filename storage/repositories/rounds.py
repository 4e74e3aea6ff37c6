"""Rounds, and the updates a round's accumulator holds (its "foldable" updates)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Round, Site, Update
from storage.states import FOLDABLE_UPDATE_STATES, OPEN_ROUND_STATES


class RoundRepository(ABC):
    @abstractmethod
    def add(self, rnd: Round) -> None: ...

    @abstractmethod
    def get(self, round_id: str) -> Round | None: ...

    @abstractmethod
    def latest(self, experiment_id: str, stage_index: int) -> Round | None:
        """The stage's highest-numbered round, or None before its first."""

    @abstractmethod
    def open_for_experiment(self, experiment_id: str) -> list[Round]:
        """The experiment's rounds that are not committed or failed."""

    @abstractmethod
    def open_ids(self) -> set[str]:
        """Ids of every round that is not closed (their spool folders are kept at start)."""

    @abstractmethod
    def page(self, experiment_id: str, offset: int, limit: int) -> list[Round]:
        """The experiment's rounds in (stage, round) order, `limit` from `offset`."""

    @abstractmethod
    def foldable_updates(
        self, round_id: str, *, by_site: bool = False, limit: int | None = None
    ) -> list[tuple[Update, str]]:
        """The round's verified or folded updates with their site names: in arrival order (the fold
        order), or by site name with `by_site`; at most `limit`."""

    @abstractmethod
    def count_foldable(self, round_id: str) -> int: ...

    @abstractmethod
    def count_by_state(self) -> dict[str, int]:
        """How many rounds are in each state, over every experiment (states with none are left out)."""


class SqlRoundRepository(RoundRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, rnd: Round) -> None:
        self._session.add(rnd)

    def get(self, round_id: str) -> Round | None:
        return self._session.get(Round, round_id)

    def latest(self, experiment_id: str, stage_index: int) -> Round | None:
        return self._session.scalars(
            select(Round)
            .where(Round.experiment_id == experiment_id, Round.stage_index == stage_index)
            .order_by(Round.round.desc())
            .limit(1)
        ).first()

    def open_for_experiment(self, experiment_id: str) -> list[Round]:
        return list(
            self._session.scalars(
                select(Round).where(Round.experiment_id == experiment_id, Round.state.in_(OPEN_ROUND_STATES))
            )
        )

    def open_ids(self) -> set[str]:
        return set(self._session.scalars(select(Round.id).where(Round.state.in_(OPEN_ROUND_STATES))))

    def page(self, experiment_id: str, offset: int, limit: int) -> list[Round]:
        return list(
            self._session.scalars(
                select(Round)
                .where(Round.experiment_id == experiment_id)
                .order_by(Round.stage_index, Round.round)
                .offset(offset)
                .limit(limit)
            )
        )

    def foldable_updates(
        self, round_id: str, *, by_site: bool = False, limit: int | None = None
    ) -> list[tuple[Update, str]]:
        query = (
            select(Update, Site.name)
            .join(Site, Site.id == Update.site_id)
            .where(Update.round_id == round_id, Update.state.in_(FOLDABLE_UPDATE_STATES))
            .order_by(*((Site.name,) if by_site else (Update.created_at, Update.id)))
        )
        if limit is not None:
            query = query.limit(limit)
        return [(update, name) for update, name in self._session.execute(query).all()]

    def count_foldable(self, round_id: str) -> int:
        count = self._session.scalar(
            select(func.count(Update.id)).where(
                Update.round_id == round_id, Update.state.in_(FOLDABLE_UPDATE_STATES)
            )
        )
        return int(count or 0)

    def count_by_state(self) -> dict[str, int]:
        rows = self._session.execute(select(Round.state, func.count(Round.id)).group_by(Round.state))
        return {str(state): int(count) for state, count in rows}
