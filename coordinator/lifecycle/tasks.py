"""Tasks and workers: create, lease, release, end, cancel; a worker online or offline."""

from __future__ import annotations

from typing import Any

from coordinator.lifecycle.table import move
from fedtune.sanitize import ERROR_TEXT_LIMIT, public_text
from storage import models
from storage.registry import record_event
from storage.states import TaskState, WorkerState
from storage.uow import UnitOfWork


def create_task(
    uow: UnitOfWork,
    *,
    experiment_id: str,
    site_id: int,
    kind: str,
    stage_index: int,
    deadline: float,
    now: float,
    round_id: str | None = None,
    model_version_id: str | None = None,
) -> models.Task:
    """A pending task; its site's long-polls wake on commit (the task is leasable once its round collects)."""
    task = models.Task(
        id=models.new_id("task"),
        experiment_id=experiment_id,
        round_id=round_id,
        site_id=site_id,
        kind=kind,
        stage_index=stage_index,
        state=TaskState.PENDING,
        model_version_id=model_version_id,
        deadline_at=deadline,
        created_at=now,
        updated_at=now,
    )
    uow.tasks.add(task)
    uow.wake(sites=[site_id])
    return task


def lease_task(
    uow: UnitOfWork, task: models.Task, worker: models.Worker, lease_until: float, now: float
) -> bool:
    """pending -> leased for `worker`, unless another worker leased it first (then False)."""
    if not uow.tasks.swap_state(
        task,
        TaskState.PENDING,
        TaskState.LEASED,
        count_attempt=True,
        worker_id=worker.id,
        lease_expires_at=lease_until,
        updated_at=now,
    ):
        return False
    worker.current_task_id = task.id
    record_event(
        uow,
        "task.leased",
        f"task {task.id} ({task.kind}) leased to {worker.id}",
        task.experiment_id,
        {"task_id": task.id, "worker_id": worker.id},
    )
    return True


def release_task(uow: UnitOfWork, task: models.Task, now: float, *, expired: bool) -> None:
    """leased -> pending (its lease expired, or its worker was replaced): another worker may lease it."""
    if expired:
        record_event(
            uow,
            "task.expired",
            f"lease of task {task.id} expired; back to pending",
            task.experiment_id,
            {"task_id": task.id, "worker_id": task.worker_id},
        )
    else:
        record_event(
            uow,
            "task.released",
            f"task {task.id} back to pending: worker {task.worker_id} was replaced",
            task.experiment_id,
            {"task_id": task.id, "worker_id": task.worker_id},
        )
    move(task, TaskState.PENDING)
    task.worker_id, task.lease_expires_at, task.updated_at = None, None, now
    uow.wake(sites=[task.site_id])


def end_task(
    uow: UnitOfWork,
    task: models.Task,
    target: TaskState,
    now: float,
    *,
    error: str = "",
    metrics: dict[str, Any] | None = None,
    num_examples: int | None = None,
) -> None:
    """A task is done or failed (the one place a task ends): its result, its worker freed, its event."""
    move(task, target)
    error = public_text(error, ERROR_TEXT_LIMIT)  # often a site's text: one bounded, printable line
    task.error, task.lease_expires_at, task.updated_at = error, None, now
    if metrics is not None:
        task.metrics = dict(metrics)
    if num_examples is not None:
        task.num_examples = num_examples
    if task.worker_id:
        worker = uow.workers.get(task.worker_id)
        if worker is not None and worker.current_task_id == task.id:
            worker.current_task_id = None
    ok = target is TaskState.DONE
    record_event(
        uow,
        "task.done" if ok else "task.failed",
        f"task {task.id} {'done' if ok else 'failed'}" + (f": {error}" if error else ""),
        task.experiment_id,
        {"task_id": task.id, "error": error},
    )


def cancel_task(uow: UnitOfWork, task: models.Task, now: float) -> None:
    """pending/leased -> cancelled: the round or experiment it belonged to closed (that event says why)."""
    move(task, TaskState.CANCELLED)
    task.lease_expires_at, task.updated_at = None, now
    uow.wake()


def drop_task(uow: UnitOfWork, task: models.Task, now: float, why: str) -> None:
    """pending/leased -> cancelled while its round goes on: the round stops waiting for this site
    (no worker online, and the others can reach min_sites; docs/decisions.md 33). `why` is the event's."""
    cancel_task(uow, task, now)
    task.error = public_text(why, ERROR_TEXT_LIMIT)
    if task.worker_id:
        worker = uow.workers.get(task.worker_id)
        if worker is not None and worker.current_task_id == task.id:
            worker.current_task_id = None
    record_event(
        uow,
        "task.dropped",
        f"task {task.id} cancelled: {why}",
        task.experiment_id,
        {"task_id": task.id, "round_id": task.round_id, "reason": why},
    )


def cancel_live_tasks(
    uow: UnitOfWork, now: float, *, experiment_id: str | None = None, round_id: str | None = None
) -> int:
    """Cancel the live tasks of a round or an experiment; returns how many."""
    if round_id is not None:
        live = uow.tasks.live_for_round(round_id)
    elif experiment_id is not None:
        live = uow.tasks.live_for_experiment(experiment_id)
    else:
        raise ValueError("name a round or an experiment")
    for task in live:
        cancel_task(uow, task, now)
    return len(live)


def register_worker(
    uow: UnitOfWork,
    *,
    worker_id: str,
    site: models.Site,
    device: dict[str, Any],
    dataset_sizes: dict[str, int],
    worker_version: str,
    now: float,
) -> models.Worker:
    """A new online worker of `site`; the site's earlier workers go offline and give their tasks back."""
    previous = uow.workers.for_site(site.id)
    for task in uow.tasks.leased_by_workers([w.id for w in previous]):
        release_task(uow, task, now, expired=False)
    for old in previous:
        old.current_task_id = None
        if old.state != WorkerState.OFFLINE:
            worker_offline(uow, old, f"worker {old.id} replaced by {worker_id}")
    worker = models.Worker(
        id=worker_id,
        site_id=site.id,
        state=WorkerState.ONLINE,
        device=device,
        dataset_sizes=dataset_sizes,
        worker_version=worker_version,
        registered_at=now,
        last_seen_at=now,
    )
    uow.workers.add(worker)
    record_event(
        uow,
        "worker.registered",
        f"worker {worker_id} of site {site.name} registered",
        data={"worker_id": worker_id, "site": site.name, "device": device},
    )
    uow.wake(sites=[site.id])
    return worker


def worker_offline(uow: UnitOfWork, worker: models.Worker, message: str) -> None:
    move(worker, WorkerState.OFFLINE)
    record_event(uow, "worker.offline", message, data={"worker_id": worker.id})


def worker_online(uow: UnitOfWork, worker: models.Worker) -> None:
    move(worker, WorkerState.ONLINE)
    record_event(uow, "worker.online", f"worker {worker.id} is back online", data={"worker_id": worker.id})
