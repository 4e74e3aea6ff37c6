"""Workers and their tasks: register, heartbeat, long-poll for a task (lease), report a result."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from sqlalchemy import delete, select, update

from coordinator.clock import Clock
from coordinator.notify import Notifier
from coordinator.ratelimit import SlidingWindow
from coordinator.settings import CoordinatorSettings
from coordinator.stages import base_version_for_stage
from coordinator.strategies.registry import build_strategy
from fedtune import limits
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.sanitize import ERROR_TEXT_LIMIT, public_text
from fedtune.serde import TaskRecord
from fedtune.spec import load_spec_json
from fedtune.tensorstream.manifest import Manifest
from storage import models
from storage.registry import record_event
from storage.uow import SqlUnitOfWork, UnitOfWorkFactory

log = logging.getLogger("fedtune.coordinator.tasks")

LEASABLE_EXPERIMENT_STATES = ("running", "paused")


def get_own_task(uow: SqlUnitOfWork, site_id: int, task_id: str) -> models.Task:
    """The task if it belongs to the calling site: NOT_FOUND / PERMISSION_DENIED otherwise."""
    limits.check_id("task_id", task_id)
    task = uow.session.get(models.Task, task_id) if task_id else None
    if task is None:
        raise FedtuneError(ErrorCode.NOT_FOUND, f"no task {task_id!r}")
    if task.site_id != site_id:
        raise FedtuneError(ErrorCode.PERMISSION_DENIED, f"task {task_id} belongs to another site")
    return task


def spec_json_for_stage(spec_json: str, stage_index: int) -> str:
    """The spec with the stage strategy's client-side overrides merged into the stage's training."""
    spec = load_spec_json(spec_json)
    stage = spec.stages[stage_index]
    overrides = build_strategy(stage.strategy.name, dict(stage.strategy.options)).client_training_overrides()
    doc: dict[str, Any] = json.loads(spec_json)
    if overrides:
        training = spec.training_for(stage_index).model_dump(mode="json")
        training.update(overrides)
        doc["stages"][stage_index]["training"] = training
    return json.dumps(doc)


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
        self, uow_factory: UnitOfWorkFactory, clock: Clock, settings: CoordinatorSettings, notifier: Notifier
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._settings = settings
        self._notifier = notifier
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

    def _prune_workers(self, uow: SqlUnitOfWork, site_id: int) -> None:
        """Keep the site's newest `workers_kept_per_site` worker rows; older offline ones holding no
        task go (a Register flood cannot grow the table)."""
        kept = select(models.Worker.id).where(models.Worker.site_id == site_id)
        kept = kept.order_by(models.Worker.registered_at.desc(), models.Worker.id.desc())
        newest = list(uow.session.scalars(kept.limit(self._settings.workers_kept_per_site)))
        holding = select(models.Task.worker_id).where(
            models.Task.state == "leased", models.Task.worker_id.is_not(None)
        )
        uow.session.execute(
            delete(models.Worker)
            .where(
                models.Worker.site_id == site_id,
                models.Worker.id.not_in(newest),
                models.Worker.state == "offline",
                models.Worker.current_task_id.is_(None),
                models.Worker.id.not_in(holding),
            )
            .execution_options(synchronize_session=False)
        )

    def register(
        self, site_id: int, *, worker_version: str, device: dict[str, Any], dataset_sizes: dict[str, int]
    ) -> str:
        """A new worker id that replaces the site's earlier workers: they go offline and tasks leased to
        them go back to pending. RATE_LIMITED past `registrations_per_window`."""
        check_registration(worker_version, device, dataset_sizes)
        self._limit_registrations(site_id)
        now = self._clock.now()
        worker_id = models.new_id("wk")
        with self._uow_factory() as uow:
            site = uow.session.get(models.Site, site_id)
            assert site is not None
            previous = list(
                uow.session.scalars(select(models.Worker.id).where(models.Worker.site_id == site_id))
            )
            if previous:
                uow.session.execute(
                    update(models.Task)
                    .where(models.Task.state == "leased", models.Task.worker_id.in_(previous))
                    .values(state="pending", worker_id=None, lease_expires_at=None)
                )
                uow.session.execute(
                    update(models.Worker)
                    .where(models.Worker.id.in_(previous), models.Worker.state != "offline")
                    .values(state="offline", current_task_id=None)
                )
            uow.session.add(
                models.Worker(
                    id=worker_id,
                    site_id=site_id,
                    state="online",
                    device=device,
                    dataset_sizes=dataset_sizes,
                    worker_version=worker_version,
                    registered_at=now,
                    last_seen_at=now,
                )
            )
            uow.flush()
            self._prune_workers(uow, site_id)
            record_event(
                uow,
                "worker.registered",
                f"worker {worker_id} of site {site.name} registered",
                data={"worker_id": worker_id, "site": site.name, "device": device},
            )
            uow.commit()
        log.info("worker registered", extra={"site_id": site_id, "worker_id": worker_id})
        self._notifier.notify(sites=[site_id])  # its earlier workers' tasks are pending again
        return worker_id

    def _own_worker(self, uow: SqlUnitOfWork, site_id: int, worker_id: str) -> models.Worker:
        limits.check_id("worker_id", worker_id)
        worker = uow.session.get(models.Worker, worker_id) if worker_id else None
        if worker is None:
            raise FedtuneError(ErrorCode.NOT_FOUND, f"unknown worker {worker_id!r}; call Register first")
        if worker.site_id != site_id:
            raise FedtuneError(ErrorCode.PERMISSION_DENIED, f"worker {worker_id} belongs to another site")
        return worker

    def _touch(self, uow: SqlUnitOfWork, worker: models.Worker) -> None:
        worker.last_seen_at = self._clock.now()
        if worker.state != "online":
            worker.state = "online"
            record_event(
                uow, "worker.online", f"worker {worker.id} is back online", data={"worker_id": worker.id}
            )

    def heartbeat(self, site_id: int, worker_id: str, task_id: str = "", progress: str = "") -> bool:
        """Refresh the worker (and the lease of its task); True = stop working on that task."""
        limits.check_id("task_id", task_id)
        limits.check_text("progress", progress, limits.MAX_PROGRESS_CHARS)
        with self._uow_factory() as uow:
            worker = self._own_worker(uow, site_id, worker_id)
            was_offline = worker.state != "online"
            self._touch(uow, worker)
            cancel = False
            if task_id:
                task = uow.session.get(models.Task, task_id)
                if (
                    task is None
                    or task.site_id != site_id
                    or task.state != "leased"
                    or task.worker_id != worker_id
                ):
                    cancel = True
                    worker.current_task_id = None
                else:
                    task.lease_expires_at = self._clock.now() + self._settings.task_lease_seconds
                    worker.current_task_id = task_id
            uow.commit()
        if was_offline:
            self._notifier.notify()
        return cancel

    # ----------------------------------------------------------------- tasks
    def begin_pull(self, site_id: int, worker_id: str) -> float:
        """Mark the worker seen (NOT_FOUND / PERMISSION_DENIED for a stranger); the long-poll's cap."""
        with self._uow_factory() as uow:
            self._touch(uow, self._own_worker(uow, site_id, worker_id))
            uow.commit()
        return self._settings.max_pull_wait_seconds

    def pull(self, site_id: int, worker_id: str, wait_seconds: float) -> TaskRecord | None:
        """Lease the site's oldest pending task to the worker, waiting up to `wait_seconds` for one.

        The blocking form (tests, scripts); the gRPC server long-polls without a thread instead
        (``coordinator.worker_calls.pull_task``)."""
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
        now = self._clock.now()
        with self._uow_factory() as uow:
            candidates = uow.session.scalars(
                select(models.Task)
                .join(models.Experiment, models.Experiment.id == models.Task.experiment_id)
                .outerjoin(models.Round, models.Round.id == models.Task.round_id)
                .where(
                    models.Task.site_id == site_id,
                    models.Task.state == "pending",
                    models.Experiment.state.in_(LEASABLE_EXPERIMENT_STATES),
                    (models.Task.round_id.is_(None)) | (models.Round.state == "collecting"),
                )
                .order_by(models.Task.created_at, models.Task.id)
                .limit(5)
            ).all()
            for task in candidates:
                result = uow.session.execute(
                    update(models.Task)
                    .where(models.Task.id == task.id, models.Task.state == "pending")
                    .values(
                        state="leased",
                        worker_id=worker_id,
                        attempts=models.Task.attempts + 1,
                        lease_expires_at=now + self._settings.task_lease_seconds,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) != 1:
                    continue  # another worker of the site took it
                worker = uow.session.get(models.Worker, worker_id)
                assert worker is not None
                worker.current_task_id = task.id
                record_event(
                    uow,
                    "task.leased",
                    f"task {task.id} ({task.kind}) leased to {worker_id}",
                    task.experiment_id,
                    {"task_id": task.id, "worker_id": worker_id},
                )
                uow.session.refresh(task)
                record = self._task_record(uow, task)
                uow.commit()
                return record
        return None

    def _task_record(self, uow: SqlUnitOfWork, task: models.Task) -> TaskRecord:
        experiment = uow.session.get(models.Experiment, task.experiment_id)
        assert experiment is not None
        stage = uow.session.scalars(
            select(models.Stage).where(
                models.Stage.experiment_id == task.experiment_id, models.Stage.stage_index == task.stage_index
            )
        ).one()
        rnd = uow.session.get(models.Round, task.round_id) if task.round_id else None
        version = (
            uow.session.get(models.ModelVersion, task.model_version_id) if task.model_version_id else None
        )
        return TaskRecord(
            task_id=task.id,
            kind=task.kind,
            experiment_id=task.experiment_id,
            stage=stage.name,
            stage_index=task.stage_index,
            round=rnd.round if rnd is not None else 0,
            spec_json=spec_json_for_stage(experiment.spec_json, task.stage_index),
            model_version_id=task.model_version_id or "",
            model_manifest=Manifest.from_json(version.manifest) if version is not None else None,
            deadline_unix=task.deadline_at,
            update_kind="weights",
            base_version_id=base_version_for_stage(uow, task.experiment_id, task.stage_index) or "",
        )

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
            if task.state != "leased":
                raise FedtuneError(
                    ErrorCode.TASK_CLOSED, f"task {task_id} is {task.state}; nothing to report"
                )
            if ok and task.kind in ("init", "train"):
                raise FedtuneError(
                    ErrorCode.WRONG_STATE,
                    f"a {task.kind} task ends with PushUpdate, or ReportResult(ok=false)",
                )
            task.state = "done" if ok else "failed"
            error = public_text(error, ERROR_TEXT_LIMIT)  # a site's text: one bounded, printable line
            task.error, task.metrics, task.num_examples = error, dict(metrics), num_examples
            task.lease_expires_at, task.updated_at = None, self._clock.now()
            if task.worker_id:
                worker = uow.session.get(models.Worker, task.worker_id)
                if worker is not None and worker.current_task_id == task.id:
                    worker.current_task_id = None
            kind = "task.done" if ok else "task.failed"
            record_event(
                uow,
                kind,
                f"task {task_id} {'done' if ok else 'failed'}" + (f": {error}" if error else ""),
                task.experiment_id,
                {"task_id": task_id, "error": error},
            )
            uow.commit()
        self._notifier.notify()
