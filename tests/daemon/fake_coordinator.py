"""A small in-test Worker servicer on 127.0.0.1: a test double at the worker's unit boundary.

It serves model versions from in-memory arrays and receives updates into a StreamDecoder, and can
be told to break a FetchTensors or PushUpdate stream after N chunks, to fail calls with a status,
or to forget the worker (NOT_FOUND on heartbeat/pull) as a restarted coordinator would.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedtune.tensorstream.decoder import StreamDecoder
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.serde import (
    chunk_from_proto,
    chunk_to_proto,
    manifest_from_proto,
    manifest_to_proto,
)
from fedtune.v1 import worker_pb2, worker_pb2_grpc


@dataclass
class Upload:
    decoder: StreamDecoder
    headers: list[worker_pb2.UpdateHeader] = field(default_factory=list)
    first_chunks: list[tuple[int, int]] = field(default_factory=list)  # first chunk position per stream
    digest: str = ""


class FakeWorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.lock = threading.Lock()
        self.versions: dict[str, tuple[dict[str, np.ndarray], Manifest]] = {}
        self.fetch_requests: list[tuple[str, int, int]] = []
        self.break_fetch_after: list[int] = []  # per FetchTensors call, in order: chunks before UNAVAILABLE
        self.break_push_after: list[int] = []  # per PushUpdate call, in order
        self.forget_upload_on_break = False
        self.fail: dict[str, list[grpc.StatusCode]] = defaultdict(list)  # method -> statuses, in order
        self.calls: dict[str, int] = defaultdict(int)
        self.uploads: dict[str, Upload] = {}
        self.results: list[worker_pb2.ReportResultRequest] = []
        self.tasks: list[worker_pb2.Task] = []
        self.heartbeats: list[worker_pb2.HeartbeatRequest] = []
        self.known_workers: set[str] = set()
        self.cancel_task_ids: set[str] = set()
        self.metadata: list[dict[str, str]] = []

    # -- helpers -------------------------------------------------------------------------------------
    def add_version(self, version_id: str, arrays: dict[str, np.ndarray]) -> Manifest:
        manifest = manifest_for_arrays(arrays)
        self.versions[version_id] = (arrays, manifest)
        return manifest

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] += 1
            self.metadata.append(dict(context.invocation_metadata()))
            pending = self.fail[method]
            code = pending.pop(0) if pending else None
        if code is not None:
            context.abort(code, f"injected {code.name}")

    # -- Worker service ------------------------------------------------------------------------------
    def Register(self, request: Any, context: grpc.ServicerContext) -> worker_pb2.RegisterResponse:
        self._enter("Register", context)
        worker_id = f"w-{self.calls['Register']}"
        self.known_workers.add(worker_id)
        return worker_pb2.RegisterResponse(worker_id=worker_id, heartbeat_seconds=0.2)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> worker_pb2.HeartbeatResponse:
        self._enter("Heartbeat", context)
        if request.worker_id not in self.known_workers:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown worker {request.worker_id}")
        self.heartbeats.append(request)
        return worker_pb2.HeartbeatResponse(cancel_task=request.task_id in self.cancel_task_ids)

    def PullTask(self, request: Any, context: grpc.ServicerContext) -> worker_pb2.PullTaskResponse:
        self._enter("PullTask", context)
        if request.worker_id not in self.known_workers:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown worker {request.worker_id}")
        with self.lock:
            task = self.tasks.pop(0) if self.tasks else None
        if task is None:
            return worker_pb2.PullTaskResponse(has_task=False)
        return worker_pb2.PullTaskResponse(has_task=True, task=task)

    def FetchTensors(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.FetchTensorsResponse]:
        self._enter("FetchTensors", context)
        arrays, manifest = self.versions[request.version_id]
        with self.lock:
            self.fetch_requests.append((request.version_id, request.start_tensor, request.start_offset))
            limit = self.break_fetch_after.pop(0) if self.break_fetch_after else None
        yield worker_pb2.FetchTensorsResponse(manifest=manifest_to_proto(manifest))
        chunks = iter_chunks_from_arrays(
            arrays,
            manifest,
            chunk_bytes=request.chunk_size or 1024,
            start_tensor=request.start_tensor,
            start_offset=request.start_offset,
        )
        for sent, chunk in enumerate(chunks):
            if limit is not None and sent >= limit:
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected: connection dropped")
            yield worker_pb2.FetchTensorsResponse(chunk=chunk_to_proto(chunk))

    def PushUpdate(
        self, request_iterator: Any, context: grpc.ServicerContext
    ) -> worker_pb2.PushUpdateResponse:
        self._enter("PushUpdate", context)
        with self.lock:
            limit = self.break_push_after.pop(0) if self.break_push_after else None
        header = next(request_iterator).header
        manifest = manifest_from_proto(header.manifest)
        upload = self.uploads.get(header.task_id)
        if upload is None or not header.resume:
            upload = Upload(StreamDecoder(manifest, self.spool / f"{header.task_id}.safetensors"))
            self.uploads[header.task_id] = upload
        upload.headers.append(header)
        for count, item in enumerate(request_iterator):
            chunk = chunk_from_proto(item.chunk)
            if count == 0:
                upload.first_chunks.append((chunk.tensor_index, chunk.offset))
            if limit is not None and count >= limit:
                if self.forget_upload_on_break:
                    upload.decoder.abort()
                    del self.uploads[header.task_id]
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected: connection dropped")
            upload.decoder.add(chunk)
        upload.digest = upload.decoder.finish()
        return worker_pb2.PushUpdateResponse(
            update_id=f"u-{header.task_id}", received_bytes=manifest.total_bytes
        )

    def GetUploadStatus(
        self, request: Any, context: grpc.ServicerContext
    ) -> worker_pb2.GetUploadStatusResponse:
        self._enter("GetUploadStatus", context)
        upload = self.uploads.get(request.task_id)
        if upload is None:
            return worker_pb2.GetUploadStatusResponse()
        if upload.digest:
            return worker_pb2.GetUploadStatusResponse(complete=True)
        tensor, offset = upload.decoder.next_position
        return worker_pb2.GetUploadStatusResponse(in_progress=True, next_tensor=tensor, next_offset=offset)

    def ReportResult(self, request: Any, context: grpc.ServicerContext) -> worker_pb2.ReportResultResponse:
        self._enter("ReportResult", context)
        self.results.append(request)
        return worker_pb2.ReportResultResponse()


class FakeCoordinator:
    def __init__(self, spool: Path) -> None:
        self.servicer = FakeWorkerServicer(spool)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        worker_pb2_grpc.add_WorkerServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)
