"""An in-process coordinator over real gRPC on 127.0.0.1, plus admin/worker helpers.

The `cluster_factory` and `cluster` fixtures built on `Cluster` live in tests/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from coordinator.server import CoordinatorServer, start_server
from coordinator.settings import CoordinatorSettings
from fedtune.v1 import admin_pb2, admin_pb2_grpc
from tests.support.fake_worker import FakeWorker

ADMIN_TOKEN = "admin-secret"
SITES = {"a": "token-a", "b": "token-b", "c": "token-c"}


def spec_yaml(
    rounds: int = 3,
    min_sites: int = 3,
    deadline: float = 60.0,
    extra_stage: str = "",
    sites: list[str] | None = None,
    strategy: str = "fedavg",
    strategy_options: dict[str, float] | None = None,
) -> str:
    listed = f"\n      sites: {sites}" if sites else ""
    options = f", options: {json.dumps(strategy_options)}" if strategy_options else ""
    return f"""
name: test-experiment
base_model: {{name: tiny-model}}
task: causal-lm
seed: 7
stages:
  - kind: finetune
    rounds: {rounds}
    deadline_seconds: {deadline}
    strategy: {{name: {strategy}{options}}}
    selection:
      min_sites: {min_sites}{listed}
{extra_stage}"""


class Admin:
    def __init__(self, target: str, token: str | None = ADMIN_TOKEN) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.stub, name)
        return lambda request, **kw: method(
            request, metadata=self.metadata, timeout=kw.pop("timeout", 10), **kw
        )

    def experiment(self, experiment_id: str) -> admin_pb2.Experiment:
        return self.stub.GetExperiment(
            admin_pb2.ExperimentRef(experiment_id=experiment_id), metadata=self.metadata, timeout=10
        )

    def rounds(self, experiment_id: str) -> list[admin_pb2.RoundInfo]:
        return list(
            self.stub.ListRounds(
                admin_pb2.ListRoundsRequest(experiment_id=experiment_id), metadata=self.metadata, timeout=10
            ).rounds
        )

    def close(self) -> None:
        self.channel.close()


def make_settings(data_dir: Path, database_url: str, **overrides: Any) -> CoordinatorSettings:
    values: dict[str, Any] = dict(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        sites=",".join(f"{k}:{v}" for k, v in SITES.items()),
        scheduler_tick_seconds=0.05,
        max_pull_wait_seconds=5.0,
    )
    values.update(overrides)
    return CoordinatorSettings(**values)


class Cluster:
    """A coordinator (restartable on the same data dir + database) and its clients."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.server: CoordinatorServer = start_server(settings)
        self._clients: list[Any] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def admin(self, token: str | None = ADMIN_TOKEN) -> Admin:
        client = Admin(self.target, token)
        self._clients.append(client)
        return client

    def worker(self, site: str, token: str | None = None, register: bool = True) -> FakeWorker:
        worker = FakeWorker(self.target, site, token or SITES[site])
        if register:
            worker.register()
        self._clients.append(worker)
        return worker

    def restart(self) -> None:
        self.close_clients()
        self.server.stop(0)
        self.server = start_server(self.settings)

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def stop(self) -> None:
        self.close_clients()
        self.server.stop(0)
