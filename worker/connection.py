"""The worker's gRPC client: one channel to the coordinator, its auth metadata, retries, the unary calls.

Transient failures are retried with backoff (worker/retry.py), each wait bounded by
``max_backoff_seconds``; everything else is raised at once as an ``RpcFailure``. The streaming
transfers live next door: resumable FetchTensors downloads in worker/downloads.py and resumable
PushUpdate uploads in worker/uploads.py; `fetch_version` and `push_update` here hand over to them.
Tasks and update headers cross the wire through `fedtune.serde`, the seam the coordinator uses too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from fedtune import limits
from fedtune.errors import FedtuneError
from fedtune.serde import TaskRecord, task_from_proto
from fedtune.tensorstream.manifest import Manifest
from fedtune.tls import make_channel
from fedtune.v1 import worker_pb2, worker_pb2_grpc
from worker import downloads, uploads
from worker.retry import (
    UNARY_TIMEOUT_S,
    Backoff,
    RpcFailure,
    is_stopping,
    is_transient,
    rpc_status,
    sleep_unless_stopped,
)
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.task_io import TaskOutput

log = logging.getLogger("fedtune.worker.connection")

MAX_MESSAGE_BYTES = 32 << 20
T = TypeVar("T")


class UnreadableTask(Exception):
    """A pulled task that does not decode (e.g. a malformed manifest): the daemon reports it failed."""

    def __init__(self, task_id: str, error: FedtuneError) -> None:
        super().__init__(f"task {task_id}: {error}")
        self.task_id = task_id
        self.error = error


class Connection:
    """Client of the coordinator's Worker service for one site."""

    backoff_base_seconds = 0.5

    def __init__(
        self,
        settings: WorkerSettings,
        stop_event: threading.Event | None = None,
        *,
        on_rpc_error: Callable[[str, grpc.StatusCode], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stop_event = stop_event or threading.Event()
        self._on_rpc_error = on_rpc_error  # hears each failed attempt of a call (the worker's metrics)
        self.worker_id = ""
        self.heartbeat_seconds = settings.heartbeat_seconds
        self.metadata = (("x-fedtune-site", settings.site), ("authorization", f"Bearer {settings.token}"))
        self._channel = make_channel(
            settings.coordinator,
            [
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", int(settings.max_backoff_seconds * 1000)),
            ],
            settings.client_tls,
        )
        if settings.client_tls is None:
            log.warning(
                "plaintext connection to %s: set tls_ca (and tls_cert/tls_key) for TLS", settings.coordinator
            )
        self.stub = worker_pb2_grpc.WorkerStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    # -- retry ---------------------------------------------------------------------------------------

    def new_backoff(self) -> Backoff:
        return Backoff(base_seconds=self.backoff_base_seconds, cap_seconds=self.settings.max_backoff_seconds)

    def stopping(self, cancel: threading.Event | None = None) -> bool:
        """Whether the worker is stopping or `cancel` (the task's) is set."""
        return is_stopping(self.stop_event, cancel)

    def wait(self, seconds: float, cancel: threading.Event | None = None) -> None:
        """Sleep before a retry; raises `Stopped` when the worker stops or the task is cancelled."""
        sleep_unless_stopped(seconds, self.stop_event, cancel)

    def retrying(
        self,
        method: str,
        attempt: Callable[[], T],
        *,
        cancel: threading.Event | None = None,
        max_attempts: int | None = None,
    ) -> T:
        """Run `attempt` until it returns, retrying transient statuses with backoff."""
        backoff = self.new_backoff()
        while True:
            try:
                return attempt()
            except grpc.RpcError as err:
                code, details = rpc_status(err)
                if self._on_rpc_error is not None:
                    self._on_rpc_error(method, code)
                if not is_transient(code, details):
                    raise RpcFailure(method, code, details) from None
                if max_attempts is not None and backoff.attempt + 1 >= max_attempts:
                    raise RpcFailure(method, code, details) from None
                delay = backoff.next_delay()
                log.warning("%s: %s (%s); retrying in %.1fs", method, code.name, details, delay)
                self.wait(delay, cancel)

    def _unary(
        self,
        method: str,
        request: Any,
        *,
        timeout: float = UNARY_TIMEOUT_S,
        cancel: threading.Event | None = None,
        max_attempts: int | None = None,
    ) -> Any:
        fn = getattr(self.stub, method)
        return self.retrying(
            method,
            lambda: fn(request, metadata=self.metadata, timeout=timeout),
            cancel=cancel,
            max_attempts=max_attempts,
        )

    # -- small calls ---------------------------------------------------------------------------------

    def register(self, device: dict[str, Any], dataset_sizes: dict[str, int], worker_version: str) -> str:
        request = worker_pb2.RegisterRequest(
            site=self.settings.site,
            token=self.settings.token,
            worker_version=limits.clip_text(worker_version, limits.MAX_WORKER_VERSION_CHARS),
            device=worker_pb2.DeviceInfo(
                kind=limits.clip_text(str(device.get("kind", "")), limits.MAX_DEVICE_TEXT_CHARS),
                name=limits.clip_text(str(device.get("name", "") or ""), limits.MAX_DEVICE_TEXT_CHARS),
                memory_bytes=int(device.get("memory_bytes", 0) or 0),
                bf16=bool(device.get("bf16", False)),
            ),
            dataset_sizes=_door_dataset_sizes(dataset_sizes),
        )
        answer = self._unary("Register", request)
        self.worker_id = answer.worker_id
        if answer.heartbeat_seconds > 0:
            self.heartbeat_seconds = float(answer.heartbeat_seconds)
        return str(answer.worker_id)

    def heartbeat(self, task_id: str = "", progress: str = "") -> bool:
        """Report liveness (and the task's progress); True when the coordinator cancelled that task."""
        request = worker_pb2.HeartbeatRequest(
            worker_id=self.worker_id, task_id=task_id, progress=limits.clip_text(progress, 500)
        )
        answer = self._unary("Heartbeat", request, timeout=max(5.0, self.heartbeat_seconds), max_attempts=1)
        return bool(answer.cancel_task)

    def pull_task(self, wait: float) -> TaskRecord | None:
        """The next task, or None after `wait` seconds; `UnreadableTask` when it does not decode."""
        request = worker_pb2.PullTaskRequest(worker_id=self.worker_id, wait_seconds=wait)
        answer = self._unary("PullTask", request, timeout=wait + 15.0)
        if not answer.has_task:
            return None
        try:
            return task_from_proto(answer.task)
        except FedtuneError as err:
            raise UnreadableTask(answer.task.task_id, err) from None

    def report_result(
        self,
        task_id: str,
        ok: bool,
        *,
        error: str = "",
        metrics: dict[str, float] | None = None,
        num_examples: int = 0,
    ) -> None:
        request = worker_pb2.ReportResultRequest(
            task_id=task_id,
            ok=ok,
            error=limits.clip_text(error, 2000),
            num_examples=int(num_examples),
            metrics=limits.clip_metrics(metrics or {}),
        )
        self._unary("ReportResult", request, max_attempts=8)

    def submit_secagg(self, request: worker_pb2.SubmitSecAggRequest) -> None:
        """A secure-aggregation step's answer (worker/secagg.py builds it)."""
        self._unary("SubmitSecAgg", request, max_attempts=8)

    def upload_position(self, task_id: str, cancel: threading.Event | None = None) -> tuple[int, int] | None:
        """Where to resume an upload: (tensor, offset), (0, 0) to restart, None when complete."""
        status = self._unary(
            "GetUploadStatus", worker_pb2.GetUploadStatusRequest(task_id=task_id), cancel=cancel
        )
        if status.complete:
            return None
        if status.in_progress:
            return int(status.next_tensor), int(status.next_offset)
        return 0, 0

    # -- streams (worker/downloads.py, worker/uploads.py) --------------------------------------------

    def fetch_version(
        self,
        version_id: str,
        manifest: Manifest,
        dest: Path,
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download a version into `dest/<version>-<digest>.safetensors` (cached; resumable)."""
        return downloads.fetch_version(self, version_id, manifest, dest, cancel=cancel, progress=progress)

    def push_update(
        self,
        task_id: str,
        output: TaskOutput,
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> worker_pb2.PushUpdateResponse:
        """Stream header + chunks; after a break, resume where the coordinator stopped."""
        return uploads.push_update(self, task_id, output, cancel=cancel, progress=progress)


def _door_dataset_sizes(sizes: dict[str, int]) -> dict[str, int]:
    """The file sizes the coordinator's door accepts: valid names, the first MAX_DATASET_ENTRIES by name."""
    kept = {
        name: min(max(int(size), 0), limits.MAX_DATASET_SIZE)
        for name, size in sorted(sizes.items())
        if name and len(name) <= limits.MAX_DATASET_NAME_CHARS and limits.control_character(name) is None
    }
    return dict(list(kept.items())[: limits.MAX_DATASET_ENTRIES])


__all__ = ["MAX_MESSAGE_BYTES", "Connection", "UnreadableTask"]
