"""PushUpdate and GetUploadStatus: admit a header, spool the chunks, verify, then fold or store v0.

Every rejection happens before anything about the round changes: the header is checked against
the task, the round and the base version's layout (``admission.py``); chunks go through the
StreamDecoder (``upload_session.py``) into
``spool/<round>/<task>.safetensors.partial``; only a complete, verified file is accepted (``accept.py``).
A stream that breaks off keeps its partial (GetUploadStatus + a ``resume`` header continue it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coordinator.accept import UpdateAcceptor
from coordinator.admission import Admission, admit, check_update_header
from coordinator.aggregation import RoundAggregator
from coordinator.clock import Clock
from coordinator.settings import CoordinatorSettings
from coordinator.tasks import get_own_task
from coordinator.upload_session import UploadItem, UploadSession, next_item
from fedtune.compression.decode import decode_update
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import UpdateHeaderRecord
from fedtune.tensorstream.decoder import StreamDecoder
from storage import models
from storage.blobs import BlobStore
from storage.registry import record_event
from storage.states import RoundState, TaskState
from storage.uow import UowFactory

log = logging.getLogger("fedtune.coordinator.uploads")

# How long a new PushUpdate of a task waits for the handler of its previous, broken stream to end.
UPLOAD_HANDOVER_SECONDS = 10.0


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
        self._acceptor = UpdateAcceptor(uow_factory, blobs, aggregator, clock)
        self._uploading: set[str] = set()
        self._guard = threading.Condition()

    def _spool_path(self, task: models.Task) -> Path:
        return self._aggregator.spool_path(task.round_id or "init", task.id)

    # ----------------------------------------------------------------- push
    def push(self, site_id: int, items: Iterator[UploadItem]) -> tuple[str, int]:
        """Receive one whole update stream; returns (update id or model version id, bytes received).

        The blocking form; the gRPC server drives an ``UploadSession`` message by message instead, so
        that a stream waiting on its client holds no thread."""
        header = next_item(items)
        if not isinstance(header, UpdateHeaderRecord):
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "the first PushUpdate message must be the header")
        session = self.open(site_id, header)
        try:
            while (item := next_item(items)) is not None:
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
            with self._uow_factory.reader() as uow:  # admission only reads: no write lock
                admission = admit(uow, site_id, header, self._spool_path, self._settings.max_update_bytes)
            admission.spool_path.parent.mkdir(parents=True, exist_ok=True)
            options = {
                "max_chunk_bytes": self._settings.max_chunk_bytes,
                "check_finite": True,
                # a masked update's elements are uniform in Z_2^32: no magnitude means anything
                "max_abs_value": None if admission.masked else self._settings.max_update_abs_value,
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
            self.release(header.task_id)
            raise
        return UploadSession(self, site_id, admission, header, decoder, restarted=restarted)

    def release(self, task_id: str) -> None:
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

    def decode(self, admission: Admission) -> None:
        """A verified compressed upload: its spool file becomes the model version plus the decoded delta
        (the layout every strategy folds), O(chunk) memory. A refusal removes the spool file."""
        if admission.encoding.is_plain:
            return
        assert admission.model_manifest is not None and admission.base_blob_digest is not None
        try:
            decode_update(
                admission.spool_path,
                admission.encoding,
                admission.model_manifest,
                self._blobs.local_path(admission.base_blob_digest),
                admission.spool_path,
                max_abs_value=self._settings.max_update_abs_value,
            )
        except BaseException:
            admission.spool_path.unlink(missing_ok=True)
            raise

    def round_closed(self, admission: Admission) -> FedtuneError | None:
        """TASK_CLOSED if the admitted task or its round ended while the update was in flight."""
        with self._uow_factory.reader() as uow:
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

    def accept(
        self, site_id: int, admission: Admission, header: UpdateHeaderRecord, digest: str, received: int
    ) -> str:
        """A complete, verified upload: the stage's first version (INIT) or the round's update."""
        if admission.kind == "init":
            return self._acceptor.accept_initial(site_id, admission, header)
        return self._acceptor.accept_update(site_id, admission, header, digest, received)

    def record_rejection(self, admission: Admission, err: FedtuneError) -> None:
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
