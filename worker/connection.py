"""The worker's gRPC side: one channel to the coordinator, retries, resumable downloads and uploads.

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED) are retried with exponential backoff and full
jitter, bounded by ``max_backoff_seconds`` per wait; everything else is raised at once as an
``RpcFailure`` carrying the server's status and message. A broken FetchTensors stream resumes at the
decoder's next position (the ``.partial`` file is kept); a broken PushUpdate asks GetUploadStatus and
resumes where the coordinator stopped, or restarts when it holds nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from fedtune.tensorstream.manifest import Manifest
from fedtune.v1 import worker_pb2, worker_pb2_grpc
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.tasks import TaskOutput

log = logging.getLogger("fedtune.worker.connection")

MAX_MESSAGE_BYTES = 32 << 20
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
UNARY_TIMEOUT_S = 30.0
T = TypeVar("T")


class RpcFailure(Exception):
    """A call the coordinator answered with a non-retryable status (or one that was interrupted)."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


class Stopped(Exception):
    """The worker is stopping (or the task was cancelled) while a call was waiting to retry."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: wait uniform(0, min(cap, base * 2**attempt))."""

    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    attempt: int = 0
    rng: Callable[[], float] = random.random

    def next_delay(self) -> float:
        ceiling = min(self.cap_seconds, self.base_seconds * float(2 ** min(self.attempt, 30)))
        self.attempt += 1
        return max(0.05, ceiling * self.rng())

    def reset(self) -> None:
        self.attempt = 0


def _status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return code or grpc.StatusCode.UNKNOWN, details or ""


class Connection:
    """Client of the coordinator's Worker service for one site."""

    def __init__(self, settings: WorkerSettings, stop_event: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop_event = stop_event or threading.Event()
        self.worker_id = ""
        self.heartbeat_seconds = settings.heartbeat_seconds
        self._metadata = (("x-fedtune-site", settings.site), ("authorization", f"Bearer {settings.token}"))
        self._channel = grpc.insecure_channel(
            settings.coordinator,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", int(settings.max_backoff_seconds * 1000)),
            ],
        )
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)  # type: ignore[no-untyped-call]

    backoff_base_seconds = 0.5

    def _backoff(self) -> Backoff:
        return Backoff(base_seconds=self.backoff_base_seconds, cap_seconds=self.settings.max_backoff_seconds)

    def close(self) -> None:
        self._channel.close()

    # -- retry ---------------------------------------------------------------------------------------

    def _sleep(self, seconds: float, cancel: threading.Event | None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_event.is_set() or (cancel is not None and cancel.is_set()):
                raise Stopped("stopping")
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def retrying(
        self,
        method: str,
        attempt: Callable[[], T],
        *,
        cancel: threading.Event | None = None,
        max_attempts: int | None = None,
    ) -> T:
        """Run `attempt` until it returns, retrying transient statuses with backoff."""
        backoff = self._backoff()
        while True:
            try:
                return attempt()
            except grpc.RpcError as err:
                code, details = _status(err)
                if code not in RETRYABLE:
                    raise RpcFailure(method, code, details) from None
                if max_attempts is not None and backoff.attempt + 1 >= max_attempts:
                    raise RpcFailure(method, code, details) from None
                delay = backoff.next_delay()
                log.warning("%s: %s (%s); retrying in %.1fs", method, code.name, details, delay)
                self._sleep(delay, cancel)

    def _unary(
        self,
        method: str,
        request: Any,
        *,
        timeout: float = UNARY_TIMEOUT_S,
        cancel: threading.Event | None = None,
        max_attempts: int | None = None,
    ) -> Any:
        fn = getattr(self._stub, method)
        return self.retrying(
            method,
            lambda: fn(request, metadata=self._metadata, timeout=timeout),
            cancel=cancel,
            max_attempts=max_attempts,
        )

    # -- small calls ---------------------------------------------------------------------------------

    def register(self, device: dict[str, Any], dataset_sizes: dict[str, int], worker_version: str) -> str:
        request = worker_pb2.RegisterRequest(
            site=self.settings.site,
            token=self.settings.token,
            worker_version=worker_version,
            device=worker_pb2.DeviceInfo(
                kind=str(device.get("kind", "")),
                name=str(device.get("name", "") or ""),
                memory_bytes=int(device.get("memory_bytes", 0) or 0),
                bf16=bool(device.get("bf16", False)),
            ),
            dataset_sizes={k: int(v) for k, v in dataset_sizes.items()},
        )
        answer = self._unary("Register", request)
        self.worker_id = answer.worker_id
        if answer.heartbeat_seconds > 0:
            self.heartbeat_seconds = float(answer.heartbeat_seconds)
        return str(answer.worker_id)

    def heartbeat(self, task_id: str = "", progress: str = "") -> worker_pb2.HeartbeatResponse:
        request = worker_pb2.HeartbeatRequest(
            worker_id=self.worker_id, task_id=task_id, progress=progress[:500]
        )
        answer: worker_pb2.HeartbeatResponse = self._unary(
            "Heartbeat", request, timeout=max(5.0, self.heartbeat_seconds), max_attempts=1
        )
        return answer

    def pull_task(self, wait: float) -> worker_pb2.Task | None:
        request = worker_pb2.PullTaskRequest(worker_id=self.worker_id, wait_seconds=wait)
        answer = self._unary("PullTask", request, timeout=wait + 15.0)
        return answer.task if answer.has_task else None

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
            error=error[:2000],
            num_examples=int(num_examples),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
        )
        self._unary("ReportResult", request, max_attempts=8)

    # -- downloads -------------------------------------------------------------------------------------

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
        dest.mkdir(parents=True, exist_ok=True)
        if not manifest.digest:
            manifest = self._served_manifest(version_id, cancel)
        out_path = dest / f"{version_id}-{manifest.digest[:16]}.safetensors"
        if out_path.exists():
            log.info("version %s already downloaded (%s)", version_id, out_path.name)
            return out_path
        decoder = _open_decoder(manifest, out_path)
        try:
            self._download(version_id, manifest, decoder, cancel, progress)
        except (Stopped, RpcFailure):
            decoder.close()  # keep the .partial: a later fetch continues from it
            raise
        except BaseException:
            decoder.abort()
            raise
        decoder.finish()
        log.info("downloaded version %s (%d bytes)", version_id, manifest.total_bytes)
        return out_path

    def _download(
        self,
        version_id: str,
        manifest: Manifest,
        decoder: Any,
        cancel: threading.Event | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        backoff = self._backoff()
        stalled = 0
        while decoder.next_position[0] < len(manifest.tensors):
            before = decoder.received_bytes
            tensor, offset = decoder.next_position
            request = worker_pb2.FetchTensorsRequest(
                version_id=version_id,
                start_tensor=tensor,
                start_offset=offset,
                chunk_size=self.settings.chunk_bytes,
            )
            try:
                self._receive(
                    self._stub.FetchTensors(request, metadata=self._metadata),
                    decoder,
                    manifest,
                    cancel,
                    progress,
                )
                if decoder.complete:
                    return
                code, details = grpc.StatusCode.UNAVAILABLE, "stream ended before the last chunk"
            except grpc.RpcError as err:
                code, details = _status(err)
                if code not in RETRYABLE:
                    raise RpcFailure("FetchTensors", code, details) from None
            stalled = 0 if decoder.received_bytes > before else stalled + 1
            if stalled >= 8:
                raise RpcFailure("FetchTensors", code, f"no progress after {stalled} attempts: {details}")
            if decoder.received_bytes > before:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning(
                "download of %s broke at tensor %d offset %d (%s: %s); resuming in %.1fs",
                version_id,
                *decoder.next_position,
                code.name,
                details,
                delay,
            )
            self._sleep(delay, cancel)

    def _served_manifest(self, version_id: str, cancel: threading.Event | None) -> Manifest:
        from fedtune.tensorstream.serde import manifest_from_proto

        def first_item() -> Manifest:
            request = worker_pb2.FetchTensorsRequest(version_id=version_id)
            responses = self._stub.FetchTensors(request, metadata=self._metadata, timeout=UNARY_TIMEOUT_S)
            try:
                for item in responses:
                    if item.WhichOneof("item") == "manifest":
                        return manifest_from_proto(item.manifest)
                    break
            finally:
                responses.cancel()
            raise RpcFailure(
                "FetchTensors", grpc.StatusCode.DATA_LOSS, "the stream did not start with a manifest"
            )

        return self.retrying("FetchTensors", first_item, cancel=cancel)

    def _receive(
        self,
        responses: Iterator[worker_pb2.FetchTensorsResponse],
        decoder: Any,
        manifest: Manifest,
        cancel: threading.Event | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        from fedtune.tensorstream.serde import chunk_from_proto, manifest_from_proto

        total = manifest.total_bytes
        for item in responses:
            if self.stop_event.is_set() or (cancel is not None and cancel.is_set()):
                responses.cancel()  # type: ignore[attr-defined]
                raise Stopped("stopping")
            if item.WhichOneof("item") == "manifest":
                served = manifest_from_proto(item.manifest)
                if manifest.digest and served.digest and served.digest != manifest.digest:
                    raise RpcFailure(
                        "FetchTensors",
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"server sent digest {served.digest}, task named {manifest.digest}",
                    )
                continue
            chunk = chunk_from_proto(item.chunk)
            decoder.add(chunk)
            if progress is not None:
                progress(decoder.received_bytes, total)

    # -- uploads -------------------------------------------------------------------------------------

    def push_update(
        self,
        task_id: str,
        output: TaskOutput,
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> worker_pb2.PushUpdateResponse:
        """Stream header + chunks; after a break, resume where the coordinator stopped."""
        from fedtune.tensorstream.encoder import manifest_for_arrays

        manifest = manifest_for_arrays(output.arrays)
        start: tuple[int, int] | None = (0, 0)
        backoff = self._backoff()
        while True:
            if start is None:  # the coordinator already holds the whole update
                return worker_pb2.PushUpdateResponse(received_bytes=manifest.total_bytes)
            requests = self._upload_requests(task_id, output, manifest, start, cancel, progress)
            try:
                answer: worker_pb2.PushUpdateResponse = self._stub.PushUpdate(
                    requests, metadata=self._metadata
                )
                return answer
            except grpc.RpcError as err:
                code, details = _status(err)
                if self.stop_event.is_set() or (cancel is not None and cancel.is_set()):
                    raise Stopped("stopping") from None
                if code not in RETRYABLE:
                    raise RpcFailure("PushUpdate", code, details) from None
                delay = backoff.next_delay()
                log.warning(
                    "upload for task %s broke (%s: %s); asking what the coordinator holds in %.1fs",
                    task_id,
                    code.name,
                    details,
                    delay,
                )
                self._sleep(delay, cancel)
                start = self.upload_position(task_id, cancel)

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

    def _upload_requests(
        self,
        task_id: str,
        output: TaskOutput,
        manifest: Manifest,
        start: tuple[int, int],
        cancel: threading.Event | None,
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[worker_pb2.PushUpdateRequest]:
        from fedtune.tensorstream.encoder import iter_chunks_from_arrays
        from fedtune.tensorstream.serde import chunk_to_proto, manifest_to_proto

        resume = start != (0, 0)
        header = worker_pb2.UpdateHeader(
            task_id=task_id,
            num_examples=int(output.num_examples),
            metrics={k: float(v) for k, v in output.metrics.items()},
            manifest=manifest_to_proto(manifest),
            files=dict(output.files),
            resume=resume,
        )
        if resume:
            log.info("resuming upload for task %s at tensor %d offset %d", task_id, *start)
        yield worker_pb2.PushUpdateRequest(header=header)
        total = manifest.total_bytes
        sent = _bytes_before(manifest, *start)
        for chunk in iter_chunks_from_arrays(
            output.arrays,
            manifest,
            chunk_bytes=self.settings.chunk_bytes,
            start_tensor=start[0],
            start_offset=start[1],
        ):
            if self.stop_event.is_set() or (cancel is not None and cancel.is_set()):
                return  # ends the stream early; the server sees an incomplete upload
            yield worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk))
            sent += len(chunk.data)
            if progress is not None:
                progress(sent, total)


def _open_decoder(manifest: Manifest, out_path: Path) -> Any:
    """Continue a partial download of the same manifest when one is on disk, else start afresh."""
    from fedtune.errors import FedtuneError
    from fedtune.tensorstream.decoder import StreamDecoder

    if StreamDecoder.peek_progress(out_path) is not None:
        try:
            decoder = StreamDecoder.resume(manifest, out_path)
            log.info(
                "continuing the download of %s at tensor %d offset %d", out_path.name, *decoder.next_position
            )
            return decoder
        except FedtuneError as err:
            log.warning("cannot continue %s (%s); downloading again", out_path.name, err)
    return StreamDecoder(manifest, out_path)


def _bytes_before(manifest: Manifest, tensor: int, offset: int) -> int:
    return sum(t.nbytes for t in manifest.tensors[:tensor]) + offset


def manifest_from_task(task: worker_pb2.Task) -> Manifest:
    from fedtune.tensorstream.serde import manifest_from_proto

    return manifest_from_proto(task.model_manifest)


__all__ = ["Backoff", "Connection", "RpcFailure", "Stopped", "manifest_from_task"]
