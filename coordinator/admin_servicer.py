"""Admin service: thin. Each method checks the admin token, then calls a plain service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc

from coordinator.auth import bearer
from coordinator.bootstrap import Services
from coordinator.downloads import SideFile
from coordinator.version import __version__
from fedtune.errors import rpc_errors
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


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, services: Services) -> None:
        self._services = services

    @contextlib.contextmanager
    def _call(self, context: grpc.ServicerContext, method: str) -> Iterator[None]:
        with rpc_errors(context, method):
            _, token = bearer(context.invocation_metadata())
            self._services.auth.check_admin(token, peer=context.peer(), auth_context=context.auth_context())
            log.debug("admin call", extra={"method": method})
            yield

    def _experiment(self, experiment_id: str) -> admin_pb2.Experiment:
        return experiment_to_proto(self._services.queries.experiment(experiment_id))

    def SubmitExperiment(
        self, request: admin_pb2.SubmitExperimentRequest, context: grpc.ServicerContext
    ) -> admin_pb2.Experiment:
        with self._call(context, "SubmitExperiment"):
            experiment_id = self._services.experiments.submit(request.spec_yaml, start=request.start)
            return self._experiment(experiment_id)
        raise AssertionError("unreachable")

    def ListExperiments(
        self, request: admin_pb2.ListExperimentsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListExperimentsResponse:
        with self._call(context, "ListExperiments"):
            records = self._services.queries.experiments()
            return admin_pb2.ListExperimentsResponse(experiments=[experiment_to_proto(r) for r in records])
        raise AssertionError("unreachable")

    def GetExperiment(
        self, request: admin_pb2.ExperimentRef, context: grpc.ServicerContext
    ) -> admin_pb2.Experiment:
        with self._call(context, "GetExperiment"):
            return self._experiment(request.experiment_id)
        raise AssertionError("unreachable")

    def StartExperiment(
        self, request: admin_pb2.ExperimentRef, context: grpc.ServicerContext
    ) -> admin_pb2.Experiment:
        with self._call(context, "StartExperiment"):
            self._services.experiments.start(request.experiment_id)
            return self._experiment(request.experiment_id)
        raise AssertionError("unreachable")

    def PauseExperiment(
        self, request: admin_pb2.ExperimentRef, context: grpc.ServicerContext
    ) -> admin_pb2.Experiment:
        with self._call(context, "PauseExperiment"):
            self._services.experiments.pause(request.experiment_id, request.reason)
            return self._experiment(request.experiment_id)
        raise AssertionError("unreachable")

    def ResumeExperiment(
        self, request: admin_pb2.ExperimentRef, context: grpc.ServicerContext
    ) -> admin_pb2.Experiment:
        with self._call(context, "ResumeExperiment"):
            self._services.experiments.resume(request.experiment_id)
            return self._experiment(request.experiment_id)
        raise AssertionError("unreachable")

    def AbortExperiment(
        self, request: admin_pb2.ExperimentRef, context: grpc.ServicerContext
    ) -> admin_pb2.Experiment:
        with self._call(context, "AbortExperiment"):
            for round_id in self._services.experiments.abort(request.experiment_id, request.reason):
                self._services.aggregator.discard(round_id)
            return self._experiment(request.experiment_id)
        raise AssertionError("unreachable")

    def ListRounds(
        self, request: admin_pb2.ListRoundsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListRoundsResponse:
        with self._call(context, "ListRounds"):
            records = self._services.queries.rounds(request.experiment_id)
            return admin_pb2.ListRoundsResponse(rounds=[round_to_proto(r) for r in records])
        raise AssertionError("unreachable")

    def AddSite(
        self, request: admin_pb2.AddSiteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddSiteResponse:
        with self._call(context, "AddSite"):
            token = self._services.auth.add_site(request.name)
            return admin_pb2.AddSiteResponse(name=request.name.strip(), token=token)
        raise AssertionError("unreachable")

    def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListSitesResponse:
        with self._call(context, "ListSites"):
            return admin_pb2.ListSitesResponse(
                sites=[site_to_proto(r) for r in self._services.auth.list_sites()]
            )
        raise AssertionError("unreachable")

    def RevokeSite(
        self, request: admin_pb2.SiteRef, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeSiteResponse:
        with self._call(context, "RevokeSite"):
            done = self._services.auth.revoke_site(request.name, request.reason)
            return admin_pb2.RevokeSiteResponse(
                site=site_to_proto(done.site),
                tasks_failed=done.tasks_failed,
                tasks_cancelled=done.tasks_cancelled,
            )
        raise AssertionError("unreachable")

    def RotateSiteToken(
        self, request: admin_pb2.SiteRef, context: grpc.ServicerContext
    ) -> admin_pb2.AddSiteResponse:
        with self._call(context, "RotateSiteToken"):
            token = self._services.auth.rotate_token(request.name)
            return admin_pb2.AddSiteResponse(name=request.name, token=token)
        raise AssertionError("unreachable")

    def ListWorkers(
        self, request: admin_pb2.ListWorkersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListWorkersResponse:
        with self._call(context, "ListWorkers"):
            return admin_pb2.ListWorkersResponse(
                workers=[worker_to_proto(r) for r in self._services.queries.workers()]
            )
        raise AssertionError("unreachable")

    def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListModelsResponse:
        with self._call(context, "ListModels"):
            records = self._services.queries.models(request.experiment_id)
            return admin_pb2.ListModelsResponse(models=[model_version_to_proto(r) for r in records])
        raise AssertionError("unreachable")

    def GetModel(self, request: admin_pb2.ModelRef, context: grpc.ServicerContext) -> admin_pb2.ModelVersion:
        with self._call(context, "GetModel"):
            return model_version_to_proto(self._services.queries.model(request.version_id))
        raise AssertionError("unreachable")

    def ExportModel(
        self, request: admin_pb2.ModelRef, context: grpc.ServicerContext
    ) -> Iterator[admin_pb2.ExportModelResponse]:
        with self._call(context, "ExportModel"):
            for item in self._services.downloads.export(request.version_id):
                if isinstance(item, Manifest):
                    yield admin_pb2.ExportModelResponse(manifest=manifest_to_proto(item))
                elif isinstance(item, SideFile):
                    yield admin_pb2.ExportModelResponse(
                        file=admin_pb2.ExportedFile(name=item.name, content=item.content)
                    )
                else:
                    yield admin_pb2.ExportModelResponse(chunk=chunk_to_proto(item))

    def WatchEvents(
        self, request: admin_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[admin_pb2.Event]:
        with self._call(context, "WatchEvents"):
            stopping = self._services.notifier

            def keep_going() -> bool:
                return bool(context.is_active()) and not stopping.closed

            for record in self._services.queries.watch(
                request.after_id, request.experiment_id, request.follow, keep_going
            ):
                yield event_to_proto(record)

    def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CoordinatorStatus:
        with self._call(context, "GetStatus"):
            status = self._services.queries.status()
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
