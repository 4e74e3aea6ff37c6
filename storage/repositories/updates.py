"""Updates pushed for tasks (one per task at most: the `task_id` column is unique)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Update


class UpdateRepository(ABC):
    @abstractmethod
    def add(self, update: Update) -> None: ...

    @abstractmethod
    def get(self, update_id: str) -> Update | None: ...

    @abstractmethod
    def for_task(self, task_id: str) -> Update | None:
        """The task's update (verified, folded or rejected), or None."""


class SqlUpdateRepository(UpdateRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, update: Update) -> None:
        self._session.add(update)

    def get(self, update_id: str) -> Update | None:
        return self._session.get(Update, update_id)

    def for_task(self, task_id: str) -> Update | None:
        return self._session.scalars(select(Update).where(Update.task_id == task_id)).first()
