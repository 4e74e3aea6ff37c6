"""Worker service: thin. Each method authenticates, then calls a plain service inside rpc_errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from coordinator.auth import bearer, check_certificate_site
from coordinator.bootstrap import Services
from coordinator.uploads import UploadItem
from fedtune.errors import rpc_errors
from fedtune.serde import task_to_proto, update_header_from_proto
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.serde import chunk_from_proto, chunk_to_proto, manifest_to_proto
from fedtune.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("fedtune.coordinator.worker_api")


def _authenticate(services: Services, context: grpc.ServicerContext, site: str, token: str) -> int:
    """The site's id. Under mutual TLS the client certificate must be the site's (checked first, so a
    wrong certificate learns nothing about tokens); the token is required either way."""
    if services.settings.tls_client_ca is not None:
        check_certificate_site(context.auth_context(), site)
    return services.auth.authenticate_site(site, token, context.peer())


def _site_id(services: Services, context: grpc.ServicerContext) -> int:
    site, token = bearer(context.invocation_metadata())
    return _authenticate(services, context, site, token)


def _push_items(requests: Iterator[worker_pb2.PushUpdateRequest]) -> Iterator[UploadItem]:
    for request in requests:
        which = request.WhichOneof("item")
        if which == "header":
            yield update_header_from_proto(request.header)
        elif which == "chunk":
            yield chunk_from_proto(request.chunk)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, services: Services) -> None:
        self._services = services

    def Register(
        self, request: worker_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> worker_pb2.RegisterResponse:
        with rpc_errors(context, "Register"):
            site_id = _authenticate(self._services, context, request.site, request.token)
            device = {
                "kind": request.device.kind,
                "name": request.device.name,
                "memory_bytes": request.device.memory_bytes,
                "bf16": request.device.bf16,
            }
            worker_id = self._services.tasks.register(
                site_id,
                worker_version=request.worker_version,
                device=device,
                dataset_sizes=dict(request.dataset_sizes),
            )
            return worker_pb2.RegisterResponse(
                worker_id=worker_id, heartbeat_seconds=self._services.settings.heartbeat_seconds
            )
        raise AssertionError("unreachable")

    def Heartbeat(
        self, request: worker_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> worker_pb2.HeartbeatResponse:
        with rpc_errors(context, "Heartbeat"):
            site_id = _site_id(self._services, context)
            cancel = self._services.tasks.heartbeat(
                site_id, request.worker_id, request.task_id, request.progress
            )
            return worker_pb2.HeartbeatResponse(cancel_task=cancel)
        raise AssertionError("unreachable")

    def PullTask(
        self, request: worker_pb2.PullTaskRequest, context: grpc.ServicerContext
    ) -> worker_pb2.PullTaskResponse:
        with rpc_errors(context, "PullTask"):
            site_id = _site_id(self._services, context)
            record = self._services.tasks.pull(site_id, request.worker_id, request.wait_seconds)
            if record is None:
                return worker_pb2.PullTaskResponse(has_task=False)
            return worker_pb2.PullTaskResponse(has_task=True, task=task_to_proto(record))
        raise AssertionError("unreachable")

    def FetchTensors(
        self, request: worker_pb2.FetchTensorsRequest, context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.FetchTensorsResponse]:
        with rpc_errors(context, "FetchTensors"):
            site_id = _site_id(self._services, context)
            items = self._services.downloads.fetch(
                request.version_id,
                request.start_tensor,
                request.start_offset,
                request.chunk_size,
                site_id=site_id,
            )
            for item in items:
                if isinstance(item, Manifest):
                    yield worker_pb2.FetchTensorsResponse(manifest=manifest_to_proto(item))
                else:
                    yield worker_pb2.FetchTensorsResponse(chunk=chunk_to_proto(item))

    def PushUpdate(
        self, request_iterator: Iterator[worker_pb2.PushUpdateRequest], context: grpc.ServicerContext
    ) -> worker_pb2.PushUpdateResponse:
        with rpc_errors(context, "PushUpdate"):
            site_id = _site_id(self._services, context)
            update_id, received = self._services.uploads.push(site_id, _push_items(request_iterator))
            return worker_pb2.PushUpdateResponse(update_id=update_id, received_bytes=received)
        raise AssertionError("unreachable")

    def GetUploadStatus(
        self, request: worker_pb2.GetUploadStatusRequest, context: grpc.ServicerContext
    ) -> worker_pb2.GetUploadStatusResponse:
        with rpc_errors(context, "GetUploadStatus"):
            site_id = _site_id(self._services, context)
            status = self._services.uploads.status(site_id, request.task_id)
            return worker_pb2.GetUploadStatusResponse(
                in_progress=status.in_progress,
                next_tensor=status.next_tensor,
                next_offset=status.next_offset,
                complete=status.complete,
            )
        raise AssertionError("unreachable")

    def ReportResult(
        self, request: worker_pb2.ReportResultRequest, context: grpc.ServicerContext
    ) -> worker_pb2.ReportResultResponse:
        with rpc_errors(context, "ReportResult"):
            site_id = _site_id(self._services, context)
            self._services.tasks.report_result(
                site_id,
                request.task_id,
                ok=request.ok,
                error=request.error,
                metrics=dict(request.metrics),
                num_examples=request.num_examples,
            )
            return worker_pb2.ReportResultResponse()
        raise AssertionError("unreachable")
