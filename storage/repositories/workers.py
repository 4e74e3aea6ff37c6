"""Worker daemons of the sites: registration rows, liveness, pruning."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session

from storage.models import Site, Task, Worker
from storage.states import TaskState, WorkerState


class WorkerRepository(ABC):
    @abstractmethod
    def add(self, worker: Worker) -> None: ...

    @abstractmethod
    def get(self, worker_id: str) -> Worker | None: ...

    @abstractmethod
    def for_site(self, site_id: int) -> list[Worker]: ...

    @abstractmethod
    def stale(self, cutoff: float) -> list[Worker]:
        """Online workers not seen since `cutoff`."""

    @abstractmethod
    def prune(self, site_id: int, keep: int) -> None:
        """Delete the site's offline workers that hold no task, except its `keep` newest workers."""

    @abstractmethod
    def count_online(self, cutoff: float) -> int:
        """Online workers seen since `cutoff`."""

    @abstractmethod
    def online_site_ids(self, site_ids: Sequence[int]) -> set[int]:
        """Those of `site_ids` that have a worker marked online (the scheduler marks silent ones offline)."""

    @abstractmethod
    def with_site_names(self) -> list[tuple[Worker, str]]:
        """Every worker with its site's name, by site name then registration."""

    @abstractmethod
    def site_summaries(self) -> dict[int, tuple[int, float]]:
        """Per site id: (workers marked online, last time any worker was seen)."""


class SqlWorkerRepository(WorkerRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, worker: Worker) -> None:
        self._session.add(worker)

    def get(self, worker_id: str) -> Worker | None:
        return self._session.get(Worker, worker_id)

    def for_site(self, site_id: int) -> list[Worker]:
        return list(self._session.scalars(select(Worker).where(Worker.site_id == site_id)))

    def stale(self, cutoff: float) -> list[Worker]:
        return list(
            self._session.scalars(
                select(Worker).where(Worker.state == WorkerState.ONLINE, Worker.last_seen_at < cutoff)
            )
        )

    def prune(self, site_id: int, keep: int) -> None:
        newest = select(Worker.id).where(Worker.site_id == site_id)
        newest = newest.order_by(Worker.registered_at.desc(), Worker.id.desc()).limit(keep)
        kept = list(self._session.scalars(newest))
        holding = select(Task.worker_id).where(Task.state == TaskState.LEASED, Task.worker_id.is_not(None))
        self._session.execute(
            delete(Worker)
            .where(
                Worker.site_id == site_id,
                Worker.id.not_in(kept),
                Worker.state == WorkerState.OFFLINE,
                Worker.current_task_id.is_(None),
                Worker.id.not_in(holding),
            )
            .execution_options(synchronize_session=False)
        )

    def count_online(self, cutoff: float) -> int:
        count = self._session.scalar(
            select(func.count(Worker.id)).where(
                Worker.state == WorkerState.ONLINE, Worker.last_seen_at >= cutoff
            )
        )
        return int(count or 0)

    def online_site_ids(self, site_ids: Sequence[int]) -> set[int]:
        if not site_ids:
            return set()
        query = select(Worker.site_id).where(
            Worker.site_id.in_(set(site_ids)), Worker.state == WorkerState.ONLINE
        )
        return set(self._session.scalars(query.distinct()))

    def with_site_names(self) -> list[tuple[Worker, str]]:
        rows = self._session.execute(
            select(Worker, Site.name)
            .join(Site, Site.id == Worker.site_id)
            .order_by(Site.name, Worker.registered_at)
        ).all()
        return [(worker, name) for worker, name in rows]

    def site_summaries(self) -> dict[int, tuple[int, float]]:
        rows = self._session.execute(
            select(
                Worker.site_id,
                func.sum(case((Worker.state == WorkerState.ONLINE, 1), else_=0)),
                func.max(Worker.last_seen_at),
            ).group_by(Worker.site_id)
        )
        return {site_id: (int(online or 0), float(last or 0.0)) for site_id, online, last in rows}
