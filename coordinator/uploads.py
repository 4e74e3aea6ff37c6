"""PushUpdate and GetUploadStatus: admit a header, spool the chunks, verify, then fold or store v0.

Every rejection happens before anything about the round changes: the header is checked against
the task, the round and the base version's layout; chunks go through the StreamDecoder into
``spool/<round>/<task>.safetensors.partial``; only a complete, verified file becomes an Update row.
A stream that breaks off keeps its partial (GetUploadStatus + a ``resume`` header continue it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coordinator import lifecycle
from coordinator.aggregation import RoundAggregator
from coordinator.clock import Clock
from coordinator.settings import CoordinatorSettings
from coordinator.stages import BASE_VERSION_FILE, base_version_for_stage, base_version_json
from coordinator.strategies.base import UpdateInfo
from coordinator.tasks import get_own_task
from fedtune import limits
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import UpdateHeaderRecord
from fedtune.tensorstream.decoder import StreamDecoder
from fedtune.tensorstream.manifest import Chunk, Manifest
from storage import models
from storage.blobs import BlobStore
from storage.registry import latest_model_version, record_event, store_model_version
from storage.states import RoundState, TaskState, UpdateState
from storage.uow import UnitOfWork, UowFactory

log = logging.getLogger("fedtune.coordinator.uploads")

UploadItem = UpdateHeaderRecord | Chunk


class UpdateRejected(FedtuneError):
    """The round's strategy refused a complete, verified update (recorded as a `rejected` Update)."""


# How long a new PushUpdate of a task waits for the handler of its previous, broken stream to end.
UPLOAD_HANDOVER_SECONDS = 10.0


def first_layout_difference(expected: Manifest, got: Manifest) -> str | None:
    """A sentence naming the first tensor where `got` differs from `expected`, or None if the same."""
    for index, (want, have) in enumerate(zip(expected.tensors, got.tensors, strict=False)):
        if want.name != have.name:
            return f"tensor {index} is {have.name!r}, expected {want.name!r}"
        if want.dtype != have.dtype:
            return f"tensor {want.name!r} has dtype {have.dtype}, expected {want.dtype}"
        if want.shape != have.shape:
            return f"tensor {want.name!r} has shape {list(have.shape)}, expected {list(want.shape)}"
    if len(got.tensors) != len(expected.tensors):
        return f"the update has {len(got.tensors)} tensors, the model version has {len(expected.tensors)}"
    return None


@dataclass(frozen=True)
class _Admission:
    task_id: str
    kind: str  # init or train
    experiment_id: str
    round_id: str | None
    site: str
    spool_path: Path
    stage_index: int = 0


@dataclass(frozen=True)
class UploadStatus:
    in_progress: bool
    next_tensor: int = 0
    next_offset: int = 0
    complete: bool = False


class UploadService:
    def __init__(
        self,
        uow_factory: UowFactory,
        blobs: BlobStore,
        aggregator: RoundAggregator,
        clock: Clock,
        settings: CoordinatorSettings,
    ) -> None:
        self._uow_factory = uow_factory
        self._blobs = blobs
        self._aggregator = aggregator
        self._clock = clock
        self._settings = settings
        self._uploading: set[str] = set()
        self._guard = threading.Condition()

    def _spool_path(self, task: models.Task) -> Path:
        return self._aggregator.spool_path(task.round_id or "init", task.id)

    # ----------------------------------------------------------------- admission
    def _admit(self, site_id: int, header: UpdateHeaderRecord) -> _Admission:
        with self._uow_factory() as uow:
            task = get_own_task(uow, site_id, header.task_id)
            site = uow.sites.get(site_id)
            assert site is not None
            if task.kind not in ("init", "train"):
                raise FedtuneError(
                    ErrorCode.WRONG_STATE, f"a {task.kind} task has no update; use ReportResult"
                )
            previous = uow.updates.for_task(task.id)
            if previous is not None:
                raise FedtuneError(
                    ErrorCode.TASK_CLOSED, f"task {task.id} already has a {previous.state} update (replay)"
                )
            if task.state != TaskState.LEASED:
                raise FedtuneError(
                    ErrorCode.TASK_CLOSED, f"task {task.id} is {task.state}, not leased; pull it first"
                )
            if task.kind == "train":
                self._check_train(uow, task, header)
            elif latest_model_version(uow, task.experiment_id, stage_index=task.stage_index) is not None:
                raise FedtuneError(
                    ErrorCode.TASK_CLOSED,
                    f"experiment {task.experiment_id} already has the initial version of stage "
                    f"{task.stage_index}",
                )
            if header.manifest.total_bytes > self._settings.max_update_bytes:
                raise FedtuneError(
                    ErrorCode.TOO_LARGE,
                    f"update of {header.manifest.total_bytes} bytes exceeds max_update_bytes "
                    f"({self._settings.max_update_bytes})",
                )
            return _Admission(
                task.id,
                task.kind,
                task.experiment_id,
                task.round_id,
                site.name,
                self._spool_path(task),
                task.stage_index,
            )

    def _check_train(self, uow: UnitOfWork, task: models.Task, header: UpdateHeaderRecord) -> None:
        rnd = uow.rounds.get(task.round_id) if task.round_id else None
        if rnd is None or rnd.state != RoundState.COLLECTING:
            raise FedtuneError(
                ErrorCode.TASK_CLOSED, f"round of task {task.id} is {rnd.state if rnd else 'gone'}; too late"
            )
        if header.num_examples <= 0:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"num_examples must be > 0 for a train update, got {header.num_examples}",
            )
        base = uow.versions.get(task.model_version_id) if task.model_version_id else None
        assert base is not None
        difference = first_layout_difference(Manifest.from_json(base.manifest), header.manifest)
        if difference is not None:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"the update does not match model version {base.version}: {difference}",
            )

    # ----------------------------------------------------------------- push
    def push(self, site_id: int, items: Iterator[UploadItem]) -> tuple[str, int]:
        """Receive one whole update stream; returns (update id or model version id, bytes received).

        The blocking form; the gRPC server drives an ``UploadSession`` message by message instead, so
        that a stream waiting on its client holds no thread."""
        header = _next_item(items)
        if not isinstance(header, UpdateHeaderRecord):
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "the first PushUpdate message must be the header")
        session = self.open(site_id, header)
        try:
            while (item := _next_item(items)) is not None:
                session.add(item)
            return session.finish()
        finally:
            session.close()

    def open(self, site_id: int, header: UpdateHeaderRecord) -> UploadSession:
        """Admit a stream's header (or refuse it, changing nothing) and open its spool file."""
        check_update_header(header, self._settings.max_update_examples)
        with self._guard:
            self._wait_for_handover(header.task_id)
            self._uploading.add(header.task_id)
        try:
            admission = self._admit(site_id, header)
            admission.spool_path.parent.mkdir(parents=True, exist_ok=True)
            options = {
                "max_chunk_bytes": self._settings.max_chunk_bytes,
                "check_finite": True,
                "max_abs_value": self._settings.max_update_abs_value,
            }
            restarted = False
            if header.resume:
                # what a crash leaves (a sidecar without its partial, a partial cut short) cannot continue:
                # start again from byte 0 rather than fail (GetUploadStatus already says "not in progress")
                decoder, restarted = StreamDecoder.resume_or_restart(
                    header.manifest, admission.spool_path, **options
                )
                if restarted:
                    log.warning(
                        "no resumable partial upload; restarted from the beginning",
                        extra={"task": admission.task_id, "site": admission.site},
                    )
            else:
                decoder = StreamDecoder(header.manifest, admission.spool_path, **options)  # type: ignore[arg-type]
        except BaseException:
            self._release(header.task_id)
            raise
        return UploadSession(self, site_id, admission, header, decoder, restarted=restarted)

    def _release(self, task_id: str) -> None:
        with self._guard:
            self._uploading.discard(task_id)
            self._guard.notify_all()

    def _wait_for_handover(self, task_id: str) -> None:
        """Wait (bounded) until no stream of `task_id` is being received; call holding the guard.

        A client whose stream broke usually resumes before this server has noticed the break; the old
        stream's handler ends within moments (it keeps the verified prefix and records its progress),
        so the resume waits for it instead of failing. UNAVAILABLE (retry) if it does not end in time.
        """
        deadline = time.monotonic() + UPLOAD_HANDOVER_SECONDS
        while task_id in self._uploading:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FedtuneError(
                    ErrorCode.UNAVAILABLE,
                    f"an upload for task {task_id} is still being received; retry shortly",
                )
            self._guard.wait(remaining)

    def _round_closed(self, admission: _Admission) -> FedtuneError | None:
        """TASK_CLOSED if the admitted task or its round ended while the update was in flight."""
        with self._uow_factory() as uow:
            task = uow.tasks.get(admission.task_id)
            rnd = uow.rounds.get(admission.round_id) if admission.round_id else None
            if admission.round_id is not None and (rnd is None or rnd.state != RoundState.COLLECTING):
                state = rnd.state if rnd is not None else "gone"
                return FedtuneError(
                    ErrorCode.TASK_CLOSED,
                    f"round closed ({state}) while this update was in flight; it is not needed any more",
                )
            if task is None or task.state != TaskState.LEASED:
                state = task.state if task is not None else "gone"
                return FedtuneError(
                    ErrorCode.TASK_CLOSED, f"task {admission.task_id} is {state}; the update is not needed"
                )
        return None

    def _accept_initial(self, site_id: int, admission: _Admission, header: UpdateHeaderRecord) -> str:
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

    def _accept_update(
        self, site_id: int, admission: _Admission, header: UpdateHeaderRecord, digest: str, received: int
    ) -> str:
        """Under the round lock: the strategy weighs and folds the update, then its row is committed
        `folded` (task done); or the strategy refuses it and it is committed `rejected` (task failed,
        UpdateRejected to the site) and the round goes on with the others (decision 29)."""
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

    def _check_still_open(self, site_id: int, admission: _Admission) -> None:
        with self._uow_factory() as uow:
            task = get_own_task(uow, site_id, admission.task_id)
            rnd = uow.rounds.get(admission.round_id) if admission.round_id else None
            if task.state != TaskState.LEASED or rnd is None or rnd.state != RoundState.COLLECTING:
                admission.spool_path.unlink(missing_ok=True)  # verified, but no Update row will name it
                raise FedtuneError(ErrorCode.TASK_CLOSED, f"task {task.id} closed while its update arrived")

    def _record(
        self,
        site_id: int,
        admission: _Admission,
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
        self, site_id: int, admission: _Admission, header: UpdateHeaderRecord, update_id: str, why: str
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

    def _record_rejection(self, admission: _Admission, err: FedtuneError) -> None:
        with self._uow_factory() as uow:
            record_event(
                uow,
                "update.rejected",
                f"update from {admission.site} rejected: {err.message}",
                admission.experiment_id,
                {"task_id": admission.task_id, "code": err.code.value},
            )
            uow.commit()

    # ----------------------------------------------------------------- status
    def status(self, site_id: int, task_id: str) -> UploadStatus:
        with self._uow_factory() as uow:
            task = get_own_task(uow, site_id, task_id)
            done = uow.updates.for_task(task.id) is not None
            done = done or (task.kind == "init" and task.state == TaskState.DONE)
            path = self._spool_path(task)
        if done:
            return UploadStatus(in_progress=False, complete=True)
        progress = StreamDecoder.peek_progress(path)
        if progress is None:
            return UploadStatus(in_progress=False)
        return UploadStatus(in_progress=True, next_tensor=progress[0], next_offset=progress[1])


class UploadSession:
    """One admitted PushUpdate stream: ``add`` its chunks, then ``finish``; ``close`` always.

    A stream that breaks off (``close`` before ``finish``) keeps its verified prefix so that the
    upload can resume; a stream refused for its content leaves nothing in the spool. A round that
    closes under the stream (its spool is removed) is TASK_CLOSED ("round closed"), never INTERNAL:
    the worker moves on.
    """

    def __init__(
        self,
        service: UploadService,
        site_id: int,
        admission: _Admission,
        header: UpdateHeaderRecord,
        decoder: StreamDecoder,
        *,
        restarted: bool = False,
    ) -> None:
        self._service = service
        self._restarted = restarted  # a resume header found nothing to resume: the stream must start at 0
        self._site_id = site_id
        self._admission = admission
        self._header = header
        self._decoder = decoder
        self._first_chunk = True
        self._closed = False

    @property
    def task_id(self) -> str:
        return self._admission.task_id

    def add(self, item: UploadItem) -> None:
        with self._rejections():
            if not isinstance(item, Chunk):
                raise FedtuneError(ErrorCode.BAD_CHUNK, "a second header inside one PushUpdate stream")
            position = (item.tensor_index, item.offset)
            if self._first_chunk and self._restarted and position != (0, 0):
                raise FedtuneError(
                    ErrorCode.BAD_CHUNK,
                    f"the coordinator holds no usable partial upload for task {self.task_id} (lost in a "
                    f"crash?), so it cannot continue at tensor {position[0]} offset {position[1]}; send the "
                    "update again from tensor 0 offset 0",
                )
            if self._first_chunk and self._header.resume:
                # the client may resume from a status read before its old stream was closed here
                self._decoder.rewind_to(item.tensor_index, item.offset)
            self._first_chunk = False
            self._decoder.add(item)

    def finish(self) -> tuple[str, int]:
        """Verify the whole update and accept it: (update id or model version id, bytes received)."""
        with self._rejections():
            decoder = self._decoder
            if not decoder.complete:
                tensor, offset = decoder.next_position
                raise FedtuneError(
                    ErrorCode.INCOMPLETE_STREAM,
                    f"the stream ended at tensor {tensor} offset {offset} before the update was complete; "
                    "resume it (GetUploadStatus, then a header with resume=true)",
                )
            received = decoder.received_bytes
            self._closed = True  # finish() consumes the partial either way
            digest = decoder.finish()  # CHECKSUM_MISMATCH removes the partial
            service, admission = self._service, self._admission
            if admission.kind == "init":
                return service._accept_initial(self._site_id, admission, self._header), received
            return service._accept_update(self._site_id, admission, self._header, digest, received), received

    def close(self) -> None:
        """End the stream: keep a broken stream's verified prefix; let a resume of the task in."""
        try:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(OSError):  # the round's spool may be gone already
                    self._decoder.close()
        finally:
            self._service._release(self._admission.task_id)

    @contextlib.contextmanager
    def _rejections(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            closed = self._service._round_closed(self._admission)
            if closed is None:
                raise
            log.info("upload of task %s ended: %s (%s)", self.task_id, closed.message, err)
            self._service._record_rejection(self._admission, closed)
            raise closed from None
        except FedtuneError as err:
            if err.code is not ErrorCode.INCOMPLETE_STREAM and not self._closed:
                self._closed = True
                self._decoder.abort()  # refused content: nothing of this stream stays in the spool
            if not isinstance(err, UpdateRejected):  # that one is recorded with its Update row
                self._service._record_rejection(self._admission, err)
            raise


def check_update_header(header: UpdateHeaderRecord, max_examples: int) -> None:
    """INVALID_ARGUMENT unless every field of the header fits the door limits (fedtune.limits)."""
    limits.check_id("task_id", header.task_id)
    limits.check_num_examples("num_examples", header.num_examples, max_examples)
    limits.check_metrics("metrics", header.metrics)
    limits.check_tensor_names("manifest", header.manifest.names)
    limits.check_side_files("files", header.files)


def _finish_task(uow: UnitOfWork, task: models.Task, header: UpdateHeaderRecord, now: float) -> None:
    lifecycle.end_task(
        uow, task, TaskState.DONE, now, metrics=dict(header.metrics), num_examples=header.num_examples
    )


def _next_item(items: Iterator[UploadItem]) -> UploadItem | None:
    """The next stream item; a broken client stream becomes INCOMPLETE_STREAM."""
    try:
        return next(items, None)
    except FedtuneError:
        raise
    except Exception as err:  # the client went away mid-stream (grpc raises RpcError)
        raise FedtuneError(
            ErrorCode.INCOMPLETE_STREAM, f"the client stream broke off: {type(err).__name__}"
        ) from None
