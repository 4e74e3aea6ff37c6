"""A fake Admin service for the CLI's unit tests: canned data, recorded requests, scripted failures.

It is a test double at the gRPC boundary: the CLI talks to it over real gRPC on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedtune.tensorstream.encoder import (
    iter_chunks_from_arrays,
    iter_chunks_from_file,
    manifest_for_arrays,
    manifest_for_file,
)
from fedtune.tensorstream.manifest import Chunk, Manifest
from fedtune.tensorstream.serde import chunk_to_proto, manifest_to_proto
from fedtune.v1 import admin_pb2, admin_pb2_grpc

T0 = 1_700_000_000.0


@dataclass
class CannedExport:
    """What ExportModel streams for one version: a manifest, its chunks, then side files."""

    manifest: Manifest
    chunks: list[Chunk]
    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], files: dict[str, bytes], chunk_bytes: int = 64
    ) -> CannedExport:
        manifest = manifest_for_arrays(arrays)
        return cls(manifest, list(iter_chunks_from_arrays(arrays, manifest, chunk_bytes)), files)

    @classmethod
    def from_dir(cls, folder: Path, tensor_file: str, side_files: list[str]) -> CannedExport:
        path = folder / tensor_file
        chunks = list(iter_chunks_from_file(path, chunk_bytes=4096))
        return cls(
            manifest_for_file(path), chunks, {name: (folder / name).read_bytes() for name in side_files}
        )


def experiment(eid: str, state: str = "submitted", **fields: Any) -> admin_pb2.Experiment:
    defaults: dict[str, Any] = dict(
        name=f"{eid}-name",
        spec_yaml="name: demo\nstages: []\n",
        current_stage="finetune",
        current_stage_index=1,
        current_round=2,
        created_unix=T0,
        updated_unix=T0 + 60,
    )
    return admin_pb2.Experiment(experiment_id=eid, state=state, **{**defaults, **fields})


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    """Implements every Admin RPC with canned data. `fail[method] = (code, details)` scripts a failure;
    `required_token` makes every call check `authorization: Bearer <token>`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        self.fail: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.required_token: str | None = None
        self.experiments = {
            "exp-1": experiment("exp-1", "running", latest_model_version_id="mv-2"),
            "exp-2": experiment("exp-2", "completed", current_round=5),
        }
        self.rounds = [
            admin_pb2.RoundInfo(
                round_id="r-1",
                experiment_id="exp-1",
                stage="finetune",
                stage_index=1,
                round=1,
                state="committed",
                tasks_total=3,
                updates_received=3,
                opened_unix=T0,
                deadline_unix=T0 + 600,
                closed_unix=T0 + 120,
                metrics={"accuracy": 0.812345, "loss": 0.41},
                model_version_id="mv-2",
                site_updates=[
                    admin_pb2.SiteUpdate(
                        site="hospital-a",
                        num_examples=120,
                        weight=120.0,
                        metrics={"accuracy": 0.9},
                        received_bytes=1_359_380,
                        state="folded",
                    )
                ],
            ),
            admin_pb2.RoundInfo(
                round_id="r-2",
                experiment_id="exp-1",
                stage="finetune",
                stage_index=1,
                round=2,
                state="collecting",
                tasks_total=3,
                updates_received=1,
                opened_unix=T0 + 130,
                deadline_unix=T0 + 730,
            ),
        ]
        self.workers = [
            admin_pb2.WorkerInfo(
                site="hospital-a",
                worker_id="w-a1",
                state="busy",
                last_seen_unix=T0 + 5,
                device="cuda:0 NVIDIA H100",
                current_task_id="t-9",
                dataset_sizes={"train": 1200},
            ),
            admin_pb2.WorkerInfo(
                site="hospital-b", worker_id="w-b1", state="offline", last_seen_unix=T0 - 3600, device="cpu"
            ),
        ]
        self.sites = {
            "hospital-a": admin_pb2.SiteInfo(
                name="hospital-a", created_unix=T0 - 86400, workers_online=1, last_seen_unix=T0 + 5
            ),
            "hospital-b": admin_pb2.SiteInfo(
                name="hospital-b", created_unix=T0 - 86400, revoked_unix=T0 - 60, last_seen_unix=T0 - 3600
            ),
        }
        self.exports: dict[str, CannedExport] = {}
        self.models: dict[str, admin_pb2.ModelVersion] = {}
        self.events = [
            admin_pb2.Event(
                event_id=i,
                created_unix=T0 + i,
                experiment_id="exp-1",
                kind=kind,
                message=msg,
                data_json='{"round": 1}',
            )
            for i, (kind, msg) in enumerate(
                [
                    ("round.opened", "round 1 opened: 3 tasks"),
                    ("update.accepted", "hospital-a: 1200 examples"),
                    ("round.committed", "round 1 committed [mv-2]"),
                ],
                start=1,
            )
        ]
        self.live_events: list[admin_pb2.Event] = []  # sent after the past ones when follow is set
        self.block_after_live = False  # then keep the stream open until the client cancels (Ctrl-C)
        self.watch_cancelled = threading.Event()

    def add_model(self, version_id: str, kind: str, export: CannedExport, **fields: Any) -> None:
        self.exports[version_id] = export
        self.models[version_id] = admin_pb2.ModelVersion(
            version_id=version_id,
            experiment_id="exp-1",
            version=2,
            parent_id="mv-1",
            stage="finetune",
            round=1,
            kind=kind,
            blob_digest=export.manifest.digest,
            manifest=manifest_to_proto(export.manifest),
            metrics={"accuracy": 0.8123},
            sites=["hospital-a", "hospital-b"],
            num_examples=2400,
            created_unix=T0,
            files=sorted(export.files),
            **fields,
        )

    # ---- plumbing ----
    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append((method, request, metadata))
        if (
            self.required_token is not None
            and metadata.get("authorization") != f"Bearer {self.required_token}"
        ):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated: missing or wrong admin token")
        if method in self.fail:
            context.abort(*self.fail[method])

    def requests(self, method: str) -> list[Any]:
        return [request for name, request, _ in self.calls if name == method]

    def _experiment(self, eid: str, context: grpc.ServicerContext) -> admin_pb2.Experiment:
        if eid not in self.experiments:
            context.abort(grpc.StatusCode.NOT_FOUND, f"not_found: no experiment {eid!r}")
        return self.experiments[eid]

    def _set_state(self, request: admin_pb2.ExperimentRef, context: grpc.ServicerContext, state: str) -> Any:
        found = self._experiment(request.experiment_id, context)
        found.state = state
        return found

    # ---- Admin ----
    def SubmitExperiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("SubmitExperiment", request, context)
        created = experiment(
            "exp-new",
            "running" if request.start else "submitted",
            spec_yaml=request.spec_yaml,
            name="demo",
            current_stage="",
            current_round=0,
        )
        self.experiments["exp-new"] = created
        return created

    def ListExperiments(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListExperiments", request, context)
        return admin_pb2.ListExperimentsResponse(experiments=list(self.experiments.values()))

    def GetExperiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetExperiment", request, context)
        return self._experiment(request.experiment_id, context)

    def StartExperiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("StartExperiment", request, context)
        return self._set_state(request, context, "running")

    def PauseExperiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("PauseExperiment", request, context)
        return self._set_state(request, context, "paused")

    def ResumeExperiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ResumeExperiment", request, context)
        return self._set_state(request, context, "running")

    def AbortExperiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("AbortExperiment", request, context)
        return self._set_state(request, context, "aborted")

    def ListRounds(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListRounds", request, context)
        self._experiment(request.experiment_id, context)
        return admin_pb2.ListRoundsResponse(
            rounds=[r for r in self.rounds if r.experiment_id == request.experiment_id]
        )

    def AddSite(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("AddSite", request, context)
        return admin_pb2.AddSiteResponse(name=request.name, token=f"ftk_{request.name}_s3cr3t")

    def _site(self, name: str, context: grpc.ServicerContext) -> admin_pb2.SiteInfo:
        if name not in self.sites:
            context.abort(grpc.StatusCode.NOT_FOUND, f"not_found: no site {name!r}")
        return self.sites[name]

    def ListSites(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListSites", request, context)
        return admin_pb2.ListSitesResponse(sites=list(self.sites.values()))

    def RevokeSite(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("RevokeSite", request, context)
        site = self._site(request.name, context)
        if site.revoked_unix:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"wrong_state: site {request.name!r} is already revoked"
            )
        site.revoked_unix, site.workers_online = T0 + 100, 0
        return admin_pb2.RevokeSiteResponse(site=site, tasks_failed=2, tasks_cancelled=1)

    def RotateSiteToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("RotateSiteToken", request, context)
        self._site(request.name, context)
        return admin_pb2.AddSiteResponse(name=request.name, token=f"ftk_{request.name}_n3w")

    def ListWorkers(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListWorkers", request, context)
        return admin_pb2.ListWorkersResponse(workers=self.workers)

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListModels", request, context)
        models = [m for m in self.models.values() if request.experiment_id in ("", m.experiment_id)]
        return admin_pb2.ListModelsResponse(models=models)

    def GetModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetModel", request, context)
        if request.version_id not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"not_found: no model version {request.version_id!r}")
        return self.models[request.version_id]

    def ExportModel(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._enter("ExportModel", request, context)
        export = self.exports[request.version_id]
        yield admin_pb2.ExportModelResponse(manifest=manifest_to_proto(export.manifest))
        for chunk in export.chunks:
            yield admin_pb2.ExportModelResponse(chunk=chunk_to_proto(chunk))
        for name, content in export.files.items():
            yield admin_pb2.ExportModelResponse(file=admin_pb2.ExportedFile(name=name, content=content))

    def WatchEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._enter("WatchEvents", request, context)
        context.add_callback(self.watch_cancelled.set)
        past = [e for e in self.events if e.event_id > request.after_id]
        for event in past + (self.live_events if request.follow else []):
            if request.experiment_id in ("", event.experiment_id):
                yield event
        if request.follow and self.block_after_live:
            self.watch_cancelled.wait(timeout=10)

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetStatus", request, context)
        return admin_pb2.CoordinatorStatus(
            version="0.1.0",
            uptime_seconds=3725,
            experiments_running=1,
            workers_online=2,
            database="sqlite:///fedtune-data/registry.db",
            data_dir="/srv/fedtune-data",
        )


class FakeAdminServer:
    """FakeAdmin served on 127.0.0.1:<free port>; `.target` is what `--coordinator` takes."""

    def __init__(self, servicer: FakeAdmin, port: int) -> None:
        self.servicer = servicer
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        admin_pb2_grpc.add_AdminServicer_to_server(servicer, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.target = f"127.0.0.1:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)
