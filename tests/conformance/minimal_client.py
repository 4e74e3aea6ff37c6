"""A minimal Worker client written from docs/protocol.md and the generated stubs alone.

It imports nothing of fedtune but the generated code (``fedtune.v1.*_pb2``, ``worker_pb2_grpc``):
manifests, chunks, crc32 and sha256 are built here with numpy, hashlib and zlib, the way a third party
would. Each rule it follows names its section of docs/protocol.md ("§5" = section 5).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import numpy as np

from fedtune.v1 import common_pb2, worker_pb2, worker_pb2_grpc

log = logging.getLogger("minimal_client")
T = TypeVar("T")

MAX_MESSAGE_BYTES = 32 << 20  # §1: messages are at most 32 MiB each way
# §4: wire dtype name -> little-endian numpy storage (bfloat16 travels as its uint16 bits)
STORAGE = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<u2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}
# §8, the status table, reduced to what the client does next
RETRY, RESUME, GIVE_UP_TASK, REGISTER, FINAL = "retry", "resume", "give up task", "register", "final"
RESTART_AFTER_REFUSED_RESUME = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.INTERNAL,
}
_RETRY_AFTER = re.compile(r"retry after (\d+) s")


def error_code(details: str) -> str:
    """The `<code>` of a coordinator message `<code>: <text>` (§1)."""
    code, sep, _ = details.partition(":")
    return code if sep and " " not in code else ""


def classify(code: grpc.StatusCode, details: str) -> str:
    """What to do after a failed call (§8)."""
    prefix = error_code(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return RETRY
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return FINAL if prefix == "too_large" else RETRY
    if code == grpc.StatusCode.FAILED_PRECONDITION and prefix == "task_closed":
        return GIVE_UP_TASK
    if code == grpc.StatusCode.NOT_FOUND and details.startswith("not_found: unknown worker"):
        return REGISTER
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return REGISTER
    if code == grpc.StatusCode.DATA_LOSS and prefix == "incomplete_stream":
        return RESUME
    return FINAL


class CallFailed(Exception):
    """A call the coordinator refused; `action` is what §8 says to do."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details
        self.action = classify(code, details)
        self.prefix = error_code(details)


def failure(method: str, err: grpc.RpcError) -> CallFailed:
    return CallFailed(method, err.code(), err.details() or "")


# ----------------------------------------------------------------------------------------- tensors
def dtype_name(array: np.ndarray) -> str:
    for name, storage in STORAGE.items():
        if name != "bfloat16" and np.dtype(array.dtype).newbyteorder("<") == np.dtype(storage):
            return name
    raise ValueError(f"numpy dtype {array.dtype} has no wire dtype")


@dataclass(frozen=True)
class Encoded:
    """Tensors ready to send: the manifest (with digest, §4) and each tensor's raw bytes."""

    manifest: common_pb2.Manifest
    raw: list[bytes]


def encode(arrays: Mapping[str, np.ndarray]) -> Encoded:
    """§4: manifest order = mapping order; raw little-endian row-major bytes; sha256 over all of them."""
    tensors, raw, sha = [], [], hashlib.sha256()
    for name, array in arrays.items():
        dtype = dtype_name(array)
        data = np.ascontiguousarray(array, dtype=np.dtype(STORAGE[dtype])).tobytes(order="C")
        tensors.append(
            common_pb2.TensorInfo(name=name, dtype=dtype, shape=list(array.shape), nbytes=len(data))
        )
        raw.append(data)
        sha.update(data)
    return Encoded(common_pb2.Manifest(tensors=tensors, digest=sha.hexdigest()), raw)


def itemsize(dtype: str) -> int:
    return np.dtype(STORAGE[dtype]).itemsize


def make_chunk(tensor_index: int, offset: int, data: bytes) -> common_pb2.TensorChunk:
    return common_pb2.TensorChunk(
        tensor_index=tensor_index, offset=offset, data=data, crc32=zlib.crc32(data) & 0xFFFFFFFF
    )


def chunks(
    encoded: Encoded, chunk_bytes: int, start: tuple[int, int] = (0, 0)
) -> Iterator[common_pb2.TensorChunk]:
    """§4: stream order from `start`; one tensor per chunk; item-aligned; none for an empty tensor."""
    for index in range(start[0], len(encoded.raw)):
        data, size = encoded.raw[index], itemsize(encoded.manifest.tensors[index].dtype)
        step = max(size, chunk_bytes // size * size)
        for offset in range(start[1] if index == start[0] else 0, len(data), step):
            yield make_chunk(index, offset, data[offset : offset + step])


def decode(manifest: common_pb2.Manifest, raw: list[bytes]) -> dict[str, np.ndarray]:
    """Arrays from verified bytes (bfloat16 stays as uint16 bits)."""
    return {
        t.name: np.frombuffer(data, dtype=np.dtype(STORAGE[t.dtype])).reshape(tuple(t.shape)).copy()
        for t, data in zip(manifest.tensors, raw, strict=True)
    }


class Corrupt(Exception):
    """A downloaded stream broke a §4 rule (crc32, order, alignment, sha256)."""


@dataclass
class _Download:
    """Bytes received so far for one version, checked chunk by chunk (§7)."""

    manifest: common_pb2.Manifest
    raw: list[bytearray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.raw = [bytearray() for _ in self.manifest.tensors]

    @property
    def position(self) -> tuple[int, int]:
        """The next byte lacked: (tensor, offset); (len(tensors), 0) when complete."""
        for index, (info, data) in enumerate(zip(self.manifest.tensors, self.raw, strict=True)):
            if len(data) < info.nbytes:
                return index, len(data)
        return len(self.raw), 0

    def add(self, chunk: common_pb2.TensorChunk) -> None:
        if (chunk.tensor_index, chunk.offset) != self.position:
            raise Corrupt(f"chunk at {(chunk.tensor_index, chunk.offset)}, expected {self.position}")
        info = self.manifest.tensors[chunk.tensor_index]
        size = itemsize(info.dtype)
        end = chunk.offset + len(chunk.data)
        if not chunk.data or len(chunk.data) % size or end > info.nbytes:
            raise Corrupt(f"chunk of {len(chunk.data)} bytes at {chunk.offset} breaks tensor {info.name!r}")
        if zlib.crc32(chunk.data) & 0xFFFFFFFF != chunk.crc32:
            raise Corrupt(f"crc32 mismatch in tensor {info.name!r} at {chunk.offset}")
        self.raw[chunk.tensor_index] += chunk.data

    def finish(self) -> dict[str, np.ndarray]:
        sha = hashlib.sha256()
        for data in self.raw:
            sha.update(data)
        if sha.hexdigest() != self.manifest.digest:
            raise Corrupt(f"sha256 {sha.hexdigest()} differs from the manifest's {self.manifest.digest}")
        return decode(self.manifest, [bytes(b) for b in self.raw])


# ----------------------------------------------------------------------------------------- client
class MinimalClient:
    """One site's worker: Register, Heartbeat (own thread), PullTask, FetchTensors, PushUpdate."""

    def __init__(self, target: str, site: str, token: str, *, max_backoff: float = 2.0) -> None:
        self.site, self.token = site, token
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = (("x-fedtune-site", site), ("authorization", f"Bearer {token}"))  # §1
        self.max_backoff = max_backoff
        self.worker_id = ""
        self.heartbeat_seconds = 5.0
        self.current_task = ""  # what each Heartbeat names (§2.4)
        self.cancelled: set[str] = set()  # tasks a HeartbeatResponse cancelled
        self.heartbeats_sent = 0
        self._stop = threading.Event()
        self._heartbeats: threading.Thread | None = None

    def close(self) -> None:
        self._stop.set()
        if self._heartbeats is not None:
            self._heartbeats.join(timeout=5)
        self.channel.close()

    # -- retry (§8) ------------------------------------------------------------------------------
    def backoff(self, attempt: int, details: str = "") -> None:
        told = _RETRY_AFTER.search(details)
        if told:
            time.sleep(float(told.group(1)))
            return
        time.sleep(max(0.02, random.uniform(0, min(self.max_backoff, 0.05 * 2**attempt))))

    def retrying(self, method: str, call: Callable[[], T], attempts: int = 20) -> T:
        """Run `call`, retrying what §8 calls retryable and registering again when told to."""
        for attempt in range(attempts):
            try:
                return call()
            except grpc.RpcError as err:
                failed = failure(method, err)
                if failed.action == REGISTER and method not in ("Register",):
                    self.register()
                    continue
                if failed.action != RETRY or attempt == attempts - 1:
                    raise failed from None
                self.backoff(attempt, failed.details)
        raise AssertionError("unreachable")

    # -- unary calls -----------------------------------------------------------------------------
    def register(self) -> str:
        request = worker_pb2.RegisterRequest(
            site=self.site,
            token=self.token,
            worker_version="minimal-client/1",
            device=worker_pb2.DeviceInfo(kind="cpu"),
        )
        answer = self.retrying("Register", lambda: self.stub.Register(request, timeout=10))
        self.worker_id = answer.worker_id
        self.heartbeat_seconds = answer.heartbeat_seconds or self.heartbeat_seconds
        return self.worker_id

    def heartbeat(self, task_id: str = "", progress: str = "") -> bool:
        request = worker_pb2.HeartbeatRequest(worker_id=self.worker_id, task_id=task_id, progress=progress)
        answer = self.stub.Heartbeat(request, metadata=self.metadata, timeout=10)
        self.heartbeats_sent += 1
        return bool(answer.cancel_task)

    def start_heartbeats(self) -> None:
        """§2.2: every heartbeat_seconds from a thread of its own, naming the task in progress."""

        def loop() -> None:
            while not self._stop.wait(self.heartbeat_seconds):
                task_id = self.current_task
                try:
                    if self.heartbeat(task_id, "working" if task_id else "idle") and task_id:
                        self.cancelled.add(task_id)
                except grpc.RpcError as err:
                    failed = failure("Heartbeat", err)
                    log.warning("%s", failed)
                    if failed.action == REGISTER:
                        self.register()

        self._heartbeats = threading.Thread(target=loop, name=f"heartbeat-{self.site}", daemon=True)
        self._heartbeats.start()

    def pull_task(self, wait_seconds: float) -> worker_pb2.Task | None:
        """§3: long-poll; the call's deadline is above the wait."""

        def call() -> worker_pb2.PullTaskResponse:
            request = worker_pb2.PullTaskRequest(worker_id=self.worker_id, wait_seconds=wait_seconds)
            answer: worker_pb2.PullTaskResponse = self.stub.PullTask(
                request, metadata=self.metadata, timeout=wait_seconds + 15
            )
            return answer

        answer: worker_pb2.PullTaskResponse = self.retrying("PullTask", call)
        return answer.task if answer.has_task else None

    def upload_status(self, task_id: str) -> worker_pb2.GetUploadStatusResponse:
        request = worker_pb2.GetUploadStatusRequest(task_id=task_id)
        status: worker_pb2.GetUploadStatusResponse = self.retrying(
            "GetUploadStatus", lambda: self.stub.GetUploadStatus(request, metadata=self.metadata, timeout=10)
        )
        return status

    def report_result(
        self, task_id: str, ok: bool, *, error: str = "", metrics: Mapping[str, float] | None = None
    ) -> None:
        request = worker_pb2.ReportResultRequest(
            task_id=task_id, ok=ok, error=error, metrics=dict(metrics or {})
        )
        self.retrying(
            "ReportResult", lambda: self.stub.ReportResult(request, metadata=self.metadata, timeout=10)
        )

    # -- FetchTensors (§7) -----------------------------------------------------------------------
    def fetch_version(
        self,
        version_id: str,
        *,
        expected_digest: str = "",
        chunk_size: int = 0,
        break_after_chunks: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Download and verify a version; a broken stream resumes at the next byte lacked.

        `break_after_chunks` (for tests) cancels the first stream after that many chunks."""
        download: _Download | None = None
        attempt = 0
        calls = 0
        while download is None or download.position[0] < len(download.manifest.tensors):
            tensor, offset = download.position if download is not None else (0, 0)
            request = worker_pb2.FetchTensorsRequest(
                version_id=version_id, start_tensor=tensor, start_offset=offset, chunk_size=chunk_size
            )
            responses = self.stub.FetchTensors(request, metadata=self.metadata, timeout=60)
            calls += 1
            received = 0
            try:
                for item in responses:
                    if item.WhichOneof("item") == "manifest":
                        if expected_digest and item.manifest.digest != expected_digest:
                            raise Corrupt(f"served digest {item.manifest.digest}, expected {expected_digest}")
                        if download is None:
                            download = _Download(item.manifest)
                        elif item.manifest != download.manifest:
                            raise Corrupt("the manifest changed between calls")
                        continue
                    if download is None:
                        raise Corrupt("the stream did not start with a manifest")
                    download.add(item.chunk)
                    received += 1
                    if calls == 1 and break_after_chunks is not None and received >= break_after_chunks:
                        responses.cancel()
                        break
            except grpc.RpcError as err:
                failed = failure("FetchTensors", err)
                if failed.action != RETRY:
                    raise failed from None
                attempt += 1
                self.backoff(attempt)
        assert download is not None
        return download.finish()

    # -- PushUpdate (§5) -------------------------------------------------------------------------
    def header(
        self,
        task_id: str,
        encoded: Encoded,
        *,
        num_examples: int,
        metrics: Mapping[str, float] | None = None,
        files: Mapping[str, bytes] | None = None,
        resume: bool = False,
    ) -> worker_pb2.PushUpdateRequest:
        return worker_pb2.PushUpdateRequest(
            header=worker_pb2.UpdateHeader(
                task_id=task_id,
                num_examples=num_examples,
                metrics=dict(metrics or {}),
                manifest=encoded.manifest,
                files=dict(files or {}),
                resume=resume,
            )
        )

    def push_stream(self, requests: Iterable[worker_pb2.PushUpdateRequest]) -> worker_pb2.PushUpdateResponse:
        """One PushUpdate call, no retry: CallFailed with the coordinator's status."""
        try:
            answer: worker_pb2.PushUpdateResponse = self.stub.PushUpdate(
                iter(requests), metadata=self.metadata, timeout=60
            )
            return answer
        except grpc.RpcError as err:
            raise failure("PushUpdate", err) from None

    def push_update(
        self,
        task_id: str,
        encoded: Encoded,
        *,
        num_examples: int,
        metrics: Mapping[str, float] | None = None,
        files: Mapping[str, bytes] | None = None,
        chunk_bytes: int = 1 << 20,
        ask_status_first: bool = False,
        attempts: int = 10,
    ) -> worker_pb2.PushUpdateResponse | None:
        """Upload with the §5 resume algorithm; None when the coordinator already held it all.

        `ask_status_first`: a previous stream of this task broke; start with GetUploadStatus."""
        start: tuple[int, int] | None = self._resume_position(task_id) if ask_status_first else (0, 0)
        restarts = 0
        for attempt in range(attempts):
            if start is None:
                return None
            resume = start != (0, 0)
            requests = [
                self.header(
                    task_id, encoded, num_examples=num_examples, metrics=metrics, files=files, resume=resume
                )
            ]
            try:
                return self.push_stream(
                    [
                        *requests,
                        *(worker_pb2.PushUpdateRequest(chunk=c) for c in chunks(encoded, chunk_bytes, start)),
                    ]
                )
            except CallFailed as failed:
                if failed.action in (RETRY, RESUME):
                    self.backoff(attempt, failed.details)
                    start = self._resume_position(task_id)
                    continue
                if resume and failed.code in RESTART_AFTER_REFUSED_RESUME and restarts < 3:
                    restarts += 1
                    start = (0, 0)
                    continue
                raise
        raise AssertionError(f"upload of {task_id} did not finish in {attempts} attempts")

    def _resume_position(self, task_id: str) -> tuple[int, int] | None:
        """§5: complete -> None (done); in progress -> its position; nothing held -> (0, 0)."""
        status = self.upload_status(task_id)
        if status.complete:
            return None
        if status.in_progress:
            return int(status.next_tensor), int(status.next_offset)
        return 0, 0
