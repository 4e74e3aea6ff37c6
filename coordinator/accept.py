"""What happens to a complete, verified upload: an INIT task's tensors become the stage's first version;
a round's update is judged by the strategy, then recorded `folded` or `rejected` (decision 31).
"""

from __future__ import annotations

import logging

from coordinator import lifecycle
from coordinator.admission import Admission
from coordinator.aggregation import RoundAggregator
from coordinator.clock import Clock
from coordinator.stages import BASE_VERSION_FILE, base_version_for_stage, base_version_json
from coordinator.strategies.base import UpdateInfo
from coordinator.tasks import get_own_task
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import UpdateHeaderRecord
from storage import models
from storage.blobs import BlobStore
from storage.registry import latest_model_version, record_event, store_model_version
from storage.states import RoundState, TaskState, UpdateState
from storage.uow import UnitOfWork, UowFactory

log = logging.getLogger("fedtune.coordinator.uploads")


class UpdateRejected(FedtuneError):
    """The round's strategy refused a complete, verified update (recorded as a `rejected` Update)."""


class UpdateAcceptor:
    def __init__(
        self, uow_factory: UowFactory, blobs: BlobStore, aggregator: RoundAggregator, clock: Clock
    ) -> None:
        self._uow_factory = uow_factory
        self._blobs = blobs
        self._aggregator = aggregator
        self._clock = clock

    def accept_initial(self, site_id: int, admission: Admission, header: UpdateHeaderRecord) -> str:
        """Store an INIT task's tensors: version 0 (stage 0), or the first version of the stage after
        the global stages, whose parent is the global stage's output (lineage base -> global -> adapter)."""
        files = dict(header.files)
        with self._uow_factory() as uow:
            stage_name = uow.stages.get(admission.experiment_id, admission.stage_index).name
            parent_id = None
            number = 0
            if admission.stage_index > 0:
                latest = latest_model_version(uow, admission.experiment_id)
                parent_id = latest.id if latest is not None else None
                number = latest.version + 1 if latest is not None else 0
            base_id = base_version_for_stage(uow, admission.experiment_id, admission.stage_index)
            if base_id is not None:
                base = uow.versions.get(base_id)
                assert base is not None
                files[BASE_VERSION_FILE] = base_version_json(base)
        now = self._clock.now()

        def extra(uow: UnitOfWork, version: models.ModelVersion) -> None:
            task = get_own_task(uow, site_id, admission.task_id)
            if task.state != TaskState.LEASED:
                raise FedtuneError(
                    ErrorCode.TASK_CLOSED, f"task {task.id} is {task.state}; update not stored"
                )
            _finish_task(uow, task, header, now)
            record_event(
                uow,
                "update.accepted",
                f"initial tensors from {admission.site} are version {number} ({stage_name})",
                admission.experiment_id,
                {"task_id": task.id, "version_id": version.id, "kind": "init"},
            )

        version = store_model_version(
            self._uow_factory,
            self._blobs,
            tensors_path=admission.spool_path,
            files=files,
            experiment_id=admission.experiment_id,
            version=number,
            parent_id=parent_id,
            stage_index=admission.stage_index,
            stage_name=stage_name,
            round=0,
            kind="adapter",
            manifest=header.manifest.to_json(),
            metrics=dict(header.metrics),
            sites=[admission.site],
            num_examples=max(0, header.num_examples),
            extra=extra,
            move=True,
        )
        log.info(
            "initial version stored", extra={"experiment": admission.experiment_id, "version": version.id}
        )
        return version.id

    def accept_update(
        self, site_id: int, admission: Admission, header: UpdateHeaderRecord, digest: str, received: int
    ) -> str:
        """Under the round lock: the strategy weighs and folds the update, then its row is committed
        `folded` (task done); or the strategy refuses it and it is committed `rejected` (task failed,
        UpdateRejected to the site) and the round goes on with the others (decision 31)."""
        round_id = admission.round_id
        assert round_id is not None
        update_id = models.new_id("upd")
        info = UpdateInfo(admission.spool_path, header.num_examples, dict(header.metrics), admission.site)
        with self._aggregator.round_lock(round_id):
            self._check_still_open(site_id, admission)
            try:
                weight = self._aggregator.fold_new(round_id, update_id, info)
            except FedtuneError as refusal:
                self._reject(site_id, admission, header, update_id, refusal.message)
                raise UpdateRejected(refusal.code, refusal.message) from None
            try:
                self._record(site_id, admission, header, update_id, weight, digest, received)
            except BaseException:
                self._aggregator.forget(round_id)  # it holds an update with no committed row
                raise
        return update_id

    def _check_still_open(self, site_id: int, admission: Admission) -> None:
        with self._uow_factory.reader() as uow:  # a check: no write lock (the round lock is held)
            task = get_own_task(uow, site_id, admission.task_id)
            rnd = uow.rounds.get(admission.round_id) if admission.round_id else None
            if task.state != TaskState.LEASED or rnd is None or rnd.state != RoundState.COLLECTING:
                admission.spool_path.unlink(missing_ok=True)  # verified, but no Update row will name it
                raise FedtuneError(ErrorCode.TASK_CLOSED, f"task {task.id} closed while its update arrived")

    def _record(
        self,
        site_id: int,
        admission: Admission,
        header: UpdateHeaderRecord,
        update_id: str,
        weight: float,
        digest: str,
        received: int,
    ) -> None:
        with self._uow_factory() as uow:
            task = get_own_task(uow, site_id, admission.task_id)
            rnd = uow.rounds.get(admission.round_id) if admission.round_id else None
            assert rnd is not None and task.state == TaskState.LEASED  # the round lock kept them
            now = self._clock.now()
            lifecycle.record_update(
                uow,
                task=task,
                site=admission.site,
                round_number=rnd.round,
                state=UpdateState.FOLDED,
                now=now,
                update_id=update_id,
                weight=weight,
                num_examples=header.num_examples,
                metrics=dict(header.metrics),
                manifest=header.manifest.to_json(),
                digest=digest,
                spool_path=str(admission.spool_path),
                received_bytes=received,
            )
            _finish_task(uow, task, header, now)
            uow.commit()

    def _reject(
        self, site_id: int, admission: Admission, header: UpdateHeaderRecord, update_id: str, why: str
    ) -> None:
        """The strategy refused the update: record it `rejected` and fail its task, in one transaction."""
        admission.spool_path.unlink(missing_ok=True)  # never folded, so never needed
        with self._uow_factory() as uow:
            task = get_own_task(uow, site_id, admission.task_id)
            now = self._clock.now()
            lifecycle.record_update(
                uow,
                task=task,
                site=admission.site,
                round_number=0,
                state=UpdateState.REJECTED,
                now=now,
                update_id=update_id,
                why=why,
                num_examples=header.num_examples,
                metrics=dict(header.metrics),
                manifest=header.manifest.to_json(),
            )
            lifecycle.end_task(uow, task, TaskState.FAILED, now, error=f"update rejected: {why}")
            uow.commit()
        log.info("update rejected by the strategy", extra={"task": admission.task_id, "reason": why})


def _finish_task(uow: UnitOfWork, task: models.Task, header: UpdateHeaderRecord, now: float) -> None:
    lifecycle.end_task(
        uow, task, TaskState.DONE, now, metrics=dict(header.metrics), num_examples=header.num_examples
    )
