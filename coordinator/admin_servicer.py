"""Admin service: thin. Each method checks the admin token, then calls a plain service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, ParamSpec, TypeAlias, TypeVar

import grpc
import grpc.aio

from coordinator.admin_storage import StorageAdminMixin
from coordinator.auth import bearer
from coordinator.blocking import BlockingPool
from coordinator.bootstrap import Services
from coordinator.downloads import SideFile
from coordinator.streaming import send
from coordinator.version import __version__
from fedtune.errors import aio_rpc_errors
from fedtune.serde import (
    event_to_proto,
    experiment_to_proto,
    model_version_to_proto,
    round_to_proto,
    site_to_proto,
    worker_to_proto,
)
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.serde import chunk_to_proto, manifest_to_proto
from fedtune.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("fedtune.coordinator.admin_api")

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
P = ParamSpec("P")
T = TypeVar("T")
WATCH_POLL_SECONDS = 0.3


class AdminServicer(StorageAdminMixin, admin_pb2_grpc.AdminServicer):
    def __init__(self, services: Services, pool: BlockingPool) -> None:
        self._services = services
        self._pool = pool
        self._idle = services.settings.stream_idle_seconds

    @contextlib.asynccontextmanager
    async def _call(self, context: Context, method: str) -> AsyncIterator[None]:
        async with aio_rpc_errors(context, method, self._services.metrics.rpc_error):
            _, token = bearer(context.invocation_metadata() or ())
            self._services.auth.check_admin(token, peer=context.peer(), auth_context=context.auth_context())
            log.debug("admin call", extra={"method": method})
            yield

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._pool.run(fn, *args, **kwargs)

    def _experiment(self, experiment_id: str) -> admin_pb2.Experiment:
        return experiment_to_proto(self._services.queries.experiment(experiment_id))

    async def SubmitExperiment(
        self, request: admin_pb2.SubmitExperimentRequest, context: Context
    ) -> admin_pb2.Experiment:
        async with self._call(context, "SubmitExperiment"):

            def submit() -> admin_pb2.Experiment:
                return self._experiment(
                    self._services.experiments.submit(request.spec_yaml, start=request.start)
                )

            return await self._run(submit)
        raise AssertionError("unreachable")

    async def ListExperiments(
        self, request: admin_pb2.ListExperimentsRequest, context: Context
    ) -> admin_pb2.ListExperimentsResponse:
        async with self._call(context, "ListExperiments"):
            records = await self._run(self._services.queries.experiments)
            return admin_pb2.ListExperimentsResponse(experiments=[experiment_to_proto(r) for r in records])
        raise AssertionError("unreachable")

    async def GetExperiment(self, request: admin_pb2.ExperimentRef, context: Context) -> admin_pb2.Experiment:
        async with self._call(context, "GetExperiment"):
            return await self._run(self._experiment, request.experiment_id)
        raise AssertionError("unreachable")

    async def _transition(
        self, context: Context, method: str, change: Callable[[], object], experiment_id: str
    ) -> admin_pb2.Experiment:
        async with self._call(context, method):

            def apply() -> admin_pb2.Experiment:
                change()
                return self._experiment(experiment_id)

            return await self._run(apply)
        raise AssertionError("unreachable")

    async def StartExperiment(
        self, request: admin_pb2.ExperimentRef, context: Context
    ) -> admin_pb2.Experiment:
        experiments = self._services.experiments
        return await self._transition(
            context,
            "StartExperiment",
            lambda: experiments.start(request.experiment_id),
            request.experiment_id,
        )

    async def PauseExperiment(
        self, request: admin_pb2.ExperimentRef, context: Context
    ) -> admin_pb2.Experiment:
        experiments = self._services.experiments
        return await self._transition(
            context,
            "PauseExperiment",
            lambda: experiments.pause(request.experiment_id, request.reason),
            request.experiment_id,
        )

    async def ResumeExperiment(
        self, request: admin_pb2.ExperimentRef, context: Context
    ) -> admin_pb2.Experiment:
        experiments = self._services.experiments
        return await self._transition(
            context,
            "ResumeExperiment",
            lambda: experiments.resume(request.experiment_id),
            request.experiment_id,
        )

    async def AbortExperiment(
        self, request: admin_pb2.ExperimentRef, context: Context
    ) -> admin_pb2.Experiment:
        services = self._services

        def abort() -> None:
            for round_id in services.experiments.abort(request.experiment_id, request.reason):
                services.aggregator.discard(round_id)

        return await self._transition(context, "AbortExperiment", abort, request.experiment_id)

    async def ListRounds(
        self, request: admin_pb2.ListRoundsRequest, context: Context
    ) -> admin_pb2.ListRoundsResponse:
        async with self._call(context, "ListRounds"):
            records, next_token = await self._run(
                self._services.queries.rounds_page,
                request.experiment_id,
                request.page_size,
                request.page_token,
            )
            return admin_pb2.ListRoundsResponse(
                rounds=[round_to_proto(r) for r in records], next_page_token=next_token
            )
        raise AssertionError("unreachable")

    async def AddSite(self, request: admin_pb2.AddSiteRequest, context: Context) -> admin_pb2.AddSiteResponse:
        async with self._call(context, "AddSite"):
            token = await self._run(self._services.sites.add_site, request.name)
            return admin_pb2.AddSiteResponse(name=request.name.strip(), token=token)
        raise AssertionError("unreachable")

    async def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: Context
    ) -> admin_pb2.ListSitesResponse:
        async with self._call(context, "ListSites"):
            records = await self._run(self._services.sites.list_sites)
            return admin_pb2.ListSitesResponse(sites=[site_to_proto(r) for r in records])
        raise AssertionError("unreachable")

    async def RevokeSite(self, request: admin_pb2.SiteRef, context: Context) -> admin_pb2.RevokeSiteResponse:
        async with self._call(context, "RevokeSite"):
            done = await self._run(self._services.sites.revoke_site, request.name, request.reason)
            return admin_pb2.RevokeSiteResponse(
                site=site_to_proto(done.site),
                tasks_failed=done.tasks_failed,
                tasks_cancelled=done.tasks_cancelled,
            )
        raise AssertionError("unreachable")

    async def RotateSiteToken(
        self, request: admin_pb2.SiteRef, context: Context
    ) -> admin_pb2.AddSiteResponse:
        async with self._call(context, "RotateSiteToken"):
            token = await self._run(self._services.sites.rotate_token, request.name)
            return admin_pb2.AddSiteResponse(name=request.name, token=token)
        raise AssertionError("unreachable")

    async def ListWorkers(
        self, request: admin_pb2.ListWorkersRequest, context: Context
    ) -> admin_pb2.ListWorkersResponse:
        async with self._call(context, "ListWorkers"):
            records = await self._run(self._services.queries.workers)
            return admin_pb2.ListWorkersResponse(workers=[worker_to_proto(r) for r in records])
        raise AssertionError("unreachable")

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: Context
    ) -> admin_pb2.ListModelsResponse:
        async with self._call(context, "ListModels"):
            records = await self._run(self._services.queries.models, request.experiment_id)
            return admin_pb2.ListModelsResponse(models=[model_version_to_proto(r) for r in records])
        raise AssertionError("unreachable")

    async def GetModel(self, request: admin_pb2.ModelRef, context: Context) -> admin_pb2.ModelVersion:
        async with self._call(context, "GetModel"):
            return model_version_to_proto(await self._run(self._services.queries.model, request.version_id))
        raise AssertionError("unreachable")

    async def ExportModel(self, request: admin_pb2.ModelRef, context: Context) -> None:
        async with self._call(context, "ExportModel"):
            items = await self._run(self._services.downloads.export, request.version_id)
            async for item in self._pool.iterate(items):
                if isinstance(item, Manifest):
                    message = admin_pb2.ExportModelResponse(manifest=manifest_to_proto(item))
                elif isinstance(item, SideFile):
                    message = admin_pb2.ExportModelResponse(
                        file=admin_pb2.ExportedFile(name=item.name, content=item.content)
                    )
                else:
                    message = admin_pb2.ExportModelResponse(chunk=chunk_to_proto(item))
                await send(context, message, self._idle, "export the version again")
                self._services.metrics.bytes_sent.labels(method="ExportModel").inc(message.ByteSize())

    async def WatchEvents(self, request: admin_pb2.WatchEventsRequest, context: Context) -> None:
        """Past events after `after_id`; with `follow`, new ones until the client goes away (which
        cancels this coroutine) or the coordinator stops. Polls the events table without a thread."""
        async with self._call(context, "WatchEvents"):
            queries, notifier = self._services.queries, self._services.notifier
            if request.experiment_id:
                await self._run(queries.require_experiment, request.experiment_id)
            last = request.after_id
            while True:
                batch = await self._run(queries.events, last, request.experiment_id)
                for record in batch:
                    last = record.event_id
                    await send(context, event_to_proto(record), self._idle, "watch again with --after")
                if len(batch) == queries.EVENT_PAGE:
                    continue
                if not request.follow or notifier.closed:
                    return
                await asyncio.sleep(WATCH_POLL_SECONDS)

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Context
    ) -> admin_pb2.CoordinatorStatus:
        async with self._call(context, "GetStatus"):
            status = await self._run(self._services.queries.status)
            settings = self._services.settings
            url = self._services.engine.url.render_as_string(hide_password=True)
            return admin_pb2.CoordinatorStatus(
                version=__version__,
                uptime_seconds=float(status["uptime_seconds"]),
                experiments_running=int(status["experiments_running"]),
                workers_online=int(status["workers_online"]),
                database=url,
                data_dir=str(settings.data_dir),
            )
        raise AssertionError("unreachable")
