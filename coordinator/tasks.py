"""Workers and their tasks: register, heartbeat, long-poll for a task (lease), report a result."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from coordinator import lifecycle
from coordinator.clock import Clock
from coordinator.notify import Notifier
from coordinator.ratelimit import SlidingWindow
from coordinator.settings import CoordinatorSettings
from coordinator.task_records import TaskRecords
from fedtune import limits
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.wire import SECAGG_TASK_KINDS
from fedtune.serde import TaskRecord
from storage import models
from storage.states import TaskState, WorkerState
from storage.uow import UnitOfWork, UowFactory

log = logging.getLogger("fedtune.coordinator.tasks")
# How many of a site's oldest pending tasks one lease attempt tries (another worker may take one first).
LEASE_CANDIDATES = 5


def get_own_task(uow: UnitOfWork, site_id: int, task_id: str) -> models.Task:
    """The task if it belongs to the calling site: NOT_FOUND / PERMISSION_DENIED otherwise."""
    limits.check_id("task_id", task_id)
    task = uow.tasks.get(task_id) if task_id else None
    if task is None:
        raise FedtuneError(ErrorCode.NOT_FOUND, f"no task {task_id!r}")
    if task.site_id != site_id:
        raise FedtuneError(ErrorCode.PERMISSION_DENIED, f"task {task_id} belongs to another site")
    return task


def check_registration(worker_version: str, device: dict[str, Any], dataset_sizes: dict[str, int]) -> None:
    """INVALID_ARGUMENT unless what a worker says about itself fits the door limits."""
    limits.check_text("worker_version", worker_version, limits.MAX_WORKER_VERSION_CHARS, multiline=False)
    for key in ("kind", "name"):
        limits.check_text(
            f"device.{key}", str(device.get(key, "")), limits.MAX_DEVICE_TEXT_CHARS, multiline=False
        )
    limits.check_dataset_sizes("dataset_sizes", dataset_sizes)


class TaskService:
    def __init__(
        self, uow_factory: UowFactory, clock: Clock, settings: CoordinatorSettings, notifier: Notifier
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._settings = settings
        self._notifier = notifier
        self._records = TaskRecords()
        self._registrations = SlidingWindow(
            settings.registrations_per_window, settings.registration_window_seconds
        )

    # ----------------------------------------------------------------- workers
    def _limit_registrations(self, site_id: int) -> None:
        if not self._registrations.try_hit(site_id):
            raise FedtuneError(
                ErrorCode.RATE_LIMITED,
                f"too many Register calls for this site (limit {self._registrations.limit} per "
                f"{self._registrations.window_seconds:g} s: a worker registers once at start); "
                f"retry after {math.ceil(self._registrations.retry_after(site_id))} s",
            )

    def register(
        self, site_id: int, *, worker_version: str, device: dict[str, Any], dataset_sizes: dict[str, int]
    ) -> str:
        """A new worker id that replaces the site's earlier workers: they go offline and tasks leased to
        them go back to pending. RATE_LIMITED past `registrations_per_window`."""
        check_registration(worker_version, device, dataset_sizes)
        self._limit_registrations(site_id)
        worker_id = models.new_id("wk")
        with self._uow_factory() as uow:
            site = uow.sites.get(site_id)
            assert site is not None
            lifecycle.register_worker(
                uow,
                worker_id=worker_id,
                site=site,
                device=device,
                dataset_sizes=dataset_sizes,
                worker_version=worker_version,
                now=self._clock.now(),
            )
            uow.flush()
            # older offline rows holding no task go: a Register flood cannot grow the table
            uow.workers.prune(site_id, self._settings.workers_kept_per_site)
            uow.commit()
        log.info("worker registered", extra={"site_id": site_id, "worker_id": worker_id})
        return worker_id

    def _own_worker(self, uow: UnitOfWork, site_id: int, worker_id: str) -> models.Worker:
        limits.check_id("worker_id", worker_id)
        worker = uow.workers.get(worker_id) if worker_id else None
        if worker is None:
            raise FedtuneError(ErrorCode.NOT_FOUND, f"unknown worker {worker_id!r}; call Register first")
        if worker.site_id != site_id:
            raise FedtuneError(ErrorCode.PERMISSION_DENIED, f"worker {worker_id} belongs to another site")
        return worker

    def _touch(self, uow: UnitOfWork, worker: models.Worker) -> None:
        worker.last_seen_at = self._clock.now()
        if worker.state != WorkerState.ONLINE:
            lifecycle.worker_online(uow, worker)

    def _needs_write(
        self, worker: models.Worker, task_id: str, task: models.Task | None, cancel: bool
    ) -> bool:
        """Whether a heartbeat must write: the worker comes back online or changes task, its last-seen
        time is getting stale, or its task's lease is past half (docs/decisions.md 28: most heartbeats
        of a thousand sites then only read, and take no write lock)."""
        settings, now = self._settings, self._clock.now()
        if worker.state != WorkerState.ONLINE:
            return True
        if task_id and worker.current_task_id != (None if cancel else task_id):
            return True
        # refresh last-seen while at least two more heartbeats fit before the worker counts as offline
        stale_after = settings.worker_offline_after_seconds - 2 * settings.heartbeat_seconds
        if now - worker.last_seen_at >= min(stale_after, settings.worker_offline_after_seconds / 3):
            return True
        if task is not None and task_id and not cancel:
            lease_left = (task.lease_expires_at or 0.0) - now
            # extend at half the lease, or at every heartbeat when the lease is short
            if lease_left < max(settings.task_lease_seconds / 2, 3 * settings.heartbeat_seconds):
                return True
        return False

    def heartbeat(self, site_id: int, worker_id: str, task_id: str = "", progress: str = "") -> bool:
        """Refresh the worker (and the lease of its task); True = stop working on that task."""
        limits.check_id("task_id", task_id)
        limits.check_text("progress", progress, limits.MAX_PROGRESS_CHARS)
        with self._uow_factory.reader() as uow:  # most heartbeats change nothing worth a write
            worker = self._own_worker(uow, site_id, worker_id)
            task = uow.tasks.get(task_id) if task_id else None
            cancel = bool(task_id) and (
                task is None
                or task.site_id != site_id
                or task.state != TaskState.LEASED
                or task.worker_id != worker_id
            )
            if not self._needs_write(worker, task_id, task, cancel):
                return cancel
        with self._uow_factory.relaxed() as uow:  # last-seen and lease times: no fsync (decision 42)
            worker = self._own_worker(uow, site_id, worker_id)
            self._touch(uow, worker)
            cancel = False
            if task_id:
                task = uow.tasks.get(task_id)
                if (
                    task is None
                    or task.site_id != site_id
                    or task.state != TaskState.LEASED
                    or task.worker_id != worker_id
                ):
                    cancel = True
                    worker.current_task_id = None
                else:
                    task.lease_expires_at = self._clock.now() + self._settings.task_lease_seconds
                    worker.current_task_id = task_id
            uow.commit()
        return cancel

    # ----------------------------------------------------------------- tasks
    def begin_pull(self, site_id: int, worker_id: str) -> float:
        """Mark the worker seen (NOT_FOUND / PERMISSION_DENIED for a stranger); the long-poll's cap."""
        with self._uow_factory.reader() as uow:
            if not self._needs_write(self._own_worker(uow, site_id, worker_id), "", None, False):
                return self._settings.max_pull_wait_seconds
        with self._uow_factory.relaxed() as uow:
            self._touch(uow, self._own_worker(uow, site_id, worker_id))
            uow.commit()
        return self._settings.max_pull_wait_seconds

    def pull(self, site_id: int, worker_id: str, wait_seconds: float) -> TaskRecord | None:
        """Lease the site's oldest pending task to the worker, waiting up to `wait_seconds` for one.

        The blocking form (tests, scripts); the gRPC server long-polls without a thread instead
        (``coordinator.worker_servicer.WorkerServicer.PullTask``)."""
        cap = self.begin_pull(site_id, worker_id)
        give_up = time.monotonic() + min(max(0.0, wait_seconds), cap)
        while True:
            generation = self._notifier.generation
            record = self.try_lease(site_id, worker_id)
            remaining = give_up - time.monotonic()
            if record is not None or remaining <= 0 or self._notifier.closed:
                return record
            self._notifier.wait(generation, min(remaining, 1.0))

    def try_lease(self, site_id: int, worker_id: str) -> TaskRecord | None:
        """Lease the site's oldest leasable task to the worker; None if it has none.

        Reads first (no write lock): most attempts of an idle site's long-poll find nothing, and on
        SQLite a write transaction would queue every one of them behind the others (decision 42)."""
        with self._uow_factory.reader() as uow:
            if not uow.tasks.leasable_for_site(site_id, 1):
                return None
        now = self._clock.now()
        with self._uow_factory.relaxed() as uow:  # a lease a power cut undoes is leased again
            worker = uow.workers.get(worker_id)
            assert worker is not None
            for task in uow.tasks.leasable_for_site(site_id, LEASE_CANDIDATES):  # re-read under the lock
                if not lifecycle.lease_task(uow, task, worker, now + self._settings.task_lease_seconds, now):
                    continue  # another worker of the site took it
                record = self._task_record(uow, task)
                uow.commit()
                return record
        return None

    def _task_record(self, uow: UnitOfWork, task: models.Task) -> TaskRecord:
        return self._records.record(uow, task)

    def report_result(
        self,
        site_id: int,
        task_id: str,
        *,
        ok: bool,
        error: str,
        metrics: dict[str, float],
        num_examples: int,
    ) -> None:
        """End a task without an update: a failure (any kind), or metrics of a task that has no update."""
        limits.check_text("error", error, limits.MAX_ERROR_CHARS)
        limits.check_metrics("metrics", metrics)
        limits.check_num_examples("num_examples", num_examples, self._settings.max_update_examples)
        with self._uow_factory() as uow:
            task = get_own_task(uow, site_id, task_id)
            if task.state != TaskState.LEASED:
                raise FedtuneError(
                    ErrorCode.TASK_CLOSED, f"task {task_id} is {task.state}; nothing to report"
                )
            if ok and task.kind in ("init", "train", *SECAGG_TASK_KINDS):
                ending = "SubmitSecAgg" if task.kind in SECAGG_TASK_KINDS else "PushUpdate"
                raise FedtuneError(
                    ErrorCode.WRONG_STATE,
                    f"a {task.kind} task ends with {ending}, or ReportResult(ok=false)",
                )
            target = TaskState.DONE if ok else TaskState.FAILED
            lifecycle.end_task(
                uow, task, target, self._clock.now(), error=error, metrics=metrics, num_examples=num_examples
            )
            uow.commit()
