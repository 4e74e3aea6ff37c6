"""The audit log: events in, events after an id out (what `fedtune admin watch` polls)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Event


class EventRepository(ABC):
    @abstractmethod
    def add(self, event: Event) -> None: ...

    @abstractmethod
    def after(self, after_id: int, *, experiment_id: str | None = None, limit: int = 100) -> list[Event]:
        """Events with id > `after_id`, oldest first."""

    @abstractmethod
    def latest_of_kinds(self, experiment_id: str, kinds: Sequence[str]) -> Event | None:
        """The experiment's newest event of one of `kinds`."""


class SqlEventRepository(EventRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, event: Event) -> None:
        self._session.add(event)

    def after(self, after_id: int, *, experiment_id: str | None = None, limit: int = 100) -> list[Event]:
        query = select(Event).where(Event.id > after_id)
        if experiment_id is not None:
            query = query.where(Event.experiment_id == experiment_id)
        return list(self._session.scalars(query.order_by(Event.id).limit(limit)))

    def latest_of_kinds(self, experiment_id: str, kinds: Sequence[str]) -> Event | None:
        return self._session.scalars(
            select(Event)
            .where(Event.experiment_id == experiment_id, Event.kind.in_(tuple(kinds)))
            .order_by(Event.id.desc())
            .limit(1)
        ).first()
