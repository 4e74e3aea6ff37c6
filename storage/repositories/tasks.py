"""Tasks: what the scheduler makes, workers lease and rounds count."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.models import Experiment, Round, Site, Task
from storage.states import LIVE_EXPERIMENT_STATES, LIVE_TASK_STATES, RoundState, TaskState


class TaskRepository(ABC):
    @abstractmethod
    def add(self, task: Task) -> None: ...

    @abstractmethod
    def get(self, task_id: str) -> Task | None: ...

    @abstractmethod
    def in_round(self, round_id: str) -> list[Task]: ...

    def states_in_round(self, round_id: str) -> list[str]:
        return [task.state for task in self.in_round(round_id)]

    def site_ids_in_round(self, round_id: str) -> list[int]:
        return [task.site_id for task in self.in_round(round_id)]

    def live_site_ids_in_round(self, round_id: str) -> set[int]:
        """The sites of the round's live (pending or leased) tasks."""
        return {task.site_id for task in self.live_for_round(round_id)}

    @abstractmethod
    def init_tasks(self, experiment_id: str, stage_index: int) -> list[Task]:
        """The INIT tasks made for the stage, oldest first."""

    @abstractmethod
    def live_for_experiment(self, experiment_id: str) -> list[Task]:
        """The experiment's pending or leased tasks."""

    @abstractmethod
    def live_for_round(self, round_id: str) -> list[Task]: ...

    @abstractmethod
    def live_for_site(self, site_id: int) -> list[Task]: ...

    @abstractmethod
    def expired_leases(self, now: float) -> list[Task]:
        """Leased tasks whose lease ran out before `now`."""

    @abstractmethod
    def leased_by_workers(self, worker_ids: Sequence[str]) -> list[Task]: ...

    @abstractmethod
    def leasable_for_site(self, site_id: int, limit: int) -> list[Task]:
        """The site's oldest pending tasks of live experiments that are not waiting for their round
        to collect (INIT tasks have no round)."""

    @abstractmethod
    def swap_state(
        self, task: Task, expected: str, target: str, *, count_attempt: bool = False, **values: Any
    ) -> bool:
        """Compare-and-set: move `task` from `expected` to `target` (setting `values`, and adding one to
        its attempts with `count_attempt`) only if the stored row is still `expected`; True if this call
        moved it (False: another caller did first). Called by ``coordinator.lifecycle`` only, which
        decides the states; `task` is refreshed."""

    @abstractmethod
    def done_in_round(self, round_id: str) -> list[tuple[Task, str]]:
        """The round's done tasks with their site names."""

    def count_in_round(self, round_id: str) -> int:
        return len(self.in_round(round_id))

    def count_done_in_round(self, round_id: str) -> int:
        return len(self.done_in_round(round_id))

    @abstractmethod
    def site_has_task_in(self, experiment_id: str, site_id: int) -> bool: ...


class SqlTaskRepository(TaskRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, task: Task) -> None:
        self._session.add(task)

    def get(self, task_id: str) -> Task | None:
        return self._session.get(Task, task_id)

    def in_round(self, round_id: str) -> list[Task]:
        return list(self._session.scalars(select(Task).where(Task.round_id == round_id)))

    def states_in_round(self, round_id: str) -> list[str]:
        return list(self._session.scalars(select(Task.state).where(Task.round_id == round_id)))

    def site_ids_in_round(self, round_id: str) -> list[int]:
        return list(self._session.scalars(select(Task.site_id).where(Task.round_id == round_id)))

    def live_site_ids_in_round(self, round_id: str) -> set[int]:
        query = select(Task.site_id).where(Task.round_id == round_id, Task.state.in_(LIVE_TASK_STATES))
        return set(self._session.scalars(query))  # one column: no Task objects built

    def init_tasks(self, experiment_id: str, stage_index: int) -> list[Task]:
        return list(
            self._session.scalars(
                select(Task)
                .where(
                    Task.experiment_id == experiment_id, Task.kind == "init", Task.stage_index == stage_index
                )
                .order_by(Task.created_at, Task.id)
            )
        )

    def _live(self, *conditions: Any) -> list[Task]:
        return list(self._session.scalars(select(Task).where(Task.state.in_(LIVE_TASK_STATES), *conditions)))

    def live_for_experiment(self, experiment_id: str) -> list[Task]:
        return self._live(Task.experiment_id == experiment_id)

    def live_for_round(self, round_id: str) -> list[Task]:
        return self._live(Task.round_id == round_id)

    def live_for_site(self, site_id: int) -> list[Task]:
        return self._live(Task.site_id == site_id)

    def expired_leases(self, now: float) -> list[Task]:
        return list(
            self._session.scalars(
                select(Task).where(Task.state == TaskState.LEASED, Task.lease_expires_at < now)
            )
        )

    def leased_by_workers(self, worker_ids: Sequence[str]) -> list[Task]:
        return list(
            self._session.scalars(
                select(Task).where(Task.state == TaskState.LEASED, Task.worker_id.in_(list(worker_ids)))
            )
        )

    def leasable_for_site(self, site_id: int, limit: int) -> list[Task]:
        return list(
            self._session.scalars(
                select(Task)
                .join(Experiment, Experiment.id == Task.experiment_id)
                .outerjoin(Round, Round.id == Task.round_id)
                .where(
                    Task.site_id == site_id,
                    Task.state == TaskState.PENDING,
                    Experiment.state.in_(LIVE_EXPERIMENT_STATES),
                    (Task.round_id.is_(None)) | (Round.state == RoundState.COLLECTING),
                )
                .order_by(Task.created_at, Task.id)
                .limit(limit)
            )
        )

    def swap_state(
        self, task: Task, expected: str, target: str, *, count_attempt: bool = False, **values: Any
    ) -> bool:
        if count_attempt:
            values["attempts"] = Task.attempts + 1
        result = self._session.execute(
            update(Task)
            .where(Task.id == task.id, Task.state == expected)
            .values(state=target, **values)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return False
        self._session.refresh(task)
        return True

    def done_in_round(self, round_id: str) -> list[tuple[Task, str]]:
        rows = self._session.execute(
            select(Task, Site.name)
            .join(Site, Site.id == Task.site_id)
            .where(Task.round_id == round_id, Task.state == TaskState.DONE)
        ).all()
        return [(task, name) for task, name in rows]

    def count_in_round(self, round_id: str) -> int:
        return int(self._session.scalar(select(func.count(Task.id)).where(Task.round_id == round_id)) or 0)

    def count_done_in_round(self, round_id: str) -> int:
        count = self._session.scalar(
            select(func.count(Task.id)).where(Task.round_id == round_id, Task.state == TaskState.DONE)
        )
        return int(count or 0)

    def site_has_task_in(self, experiment_id: str, site_id: int) -> bool:
        found = self._session.scalars(
            select(Task.id).where(Task.experiment_id == experiment_id, Task.site_id == site_id).limit(1)
        ).first()
        return found is not None
