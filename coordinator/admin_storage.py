"""Admin calls for retention and garbage collection (docs/decisions.md 33): thin, like the others.

A mixin of ``AdminServicer`` (which provides ``_call``, ``_run`` and ``_services``), kept apart so the
servicer module stays small.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc.aio

from coordinator.retention import set_pin
from fedtune.serde import gc_report_to_proto, model_version_to_proto, storage_usage_to_proto
from fedtune.v1 import admin_pb2

if TYPE_CHECKING:
    from coordinator.bootstrap import Services

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")


class StorageAdminMixin:
    if TYPE_CHECKING:
        _services: Services

        def _call(self, context: Context, method: str) -> contextlib.AbstractAsyncContextManager[None]: ...

        async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def PinModel(self, request: admin_pb2.PinModelRequest, context: Context) -> admin_pb2.ModelVersion:
        async with self._call(context, "PinModel"):
            services = self._services

            def pin() -> admin_pb2.ModelVersion:
                set_pin(
                    services.uow_factory, services.clock, request.version_id, request.pinned, request.reason
                )
                return model_version_to_proto(services.queries.model(request.version_id))

            return await self._run(pin)
        raise AssertionError("unreachable")

    async def GetStorageUsage(
        self, request: admin_pb2.GetStorageUsageRequest, context: Context
    ) -> admin_pb2.StorageUsage:
        async with self._call(context, "GetStorageUsage"):
            return storage_usage_to_proto(await self._run(self._services.collector.usage))
        raise AssertionError("unreachable")

    async def CollectGarbage(
        self, request: admin_pb2.CollectGarbageRequest, context: Context
    ) -> admin_pb2.CollectGarbageReport:
        async with self._call(context, "CollectGarbage"):
            report = await self._run(self._services.collector.collect, dry_run=request.dry_run)
            return gc_report_to_proto(report)
        raise AssertionError("unreachable")
