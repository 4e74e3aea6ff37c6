"""Auth failures, the Admin API surface, health, and the no-torch import rule."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedtune.v1 import admin_pb2, worker_pb2
from tests.support.cluster import Cluster, spec_yaml
from tests.support.fake_worker import ADAPTER_CONFIG, FakeWorker
from tests.support.flow import initialize, pull_train, submit
from tests.support.waiting import wait_for
from tests.support.wire import expect_error


def test_coordinator_imports_without_torch() -> None:
    code = (
        "import coordinator.server, coordinator.cli, sys; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_worker_calls_need_the_sites_token(cluster: Cluster) -> None:
    # Prepare
    good = cluster.worker("a")
    wrong = FakeWorker(cluster.target, "a", "not-the-token")
    stranger = cluster.worker("b")
    unauth = grpc.StatusCode.UNAUTHENTICATED

    # Execute + Assert
    expect_error(wrong.register, unauth, "wrong token")
    expect_error(
        lambda: good.stub.PullTask(worker_pb2.PullTaskRequest(worker_id=good.worker_id), timeout=5),
        unauth,
        "x-fedtune-site",
    )
    wrong.worker_id = good.worker_id
    expect_error(lambda: wrong.pull(0), unauth, "wrong token")
    stranger.worker_id = good.worker_id
    expect_error(lambda: stranger.pull(0), grpc.StatusCode.PERMISSION_DENIED, "another site")
    wrong.close()


def test_admin_calls_need_the_admin_token(cluster: Cluster) -> None:
    for admin in (cluster.admin(token=None), cluster.admin(token="nope")):
        expect_error(
            lambda a=admin: a.ListExperiments(admin_pb2.ListExperimentsRequest()),  # type: ignore[misc]
            grpc.StatusCode.UNAUTHENTICATED,
            "admin token",
        )


def test_added_site_token_registers_a_worker(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()

    # Execute
    added = admin.AddSite(admin_pb2.AddSiteRequest(name="hospital-x"))
    worker = FakeWorker(cluster.target, "hospital-x", added.token)
    worker.register()
    workers = admin.ListWorkers(admin_pb2.ListWorkersRequest()).workers

    # Assert
    assert [w.state for w in workers if w.site == "hospital-x"] == ["online"]
    expect_error(
        lambda: admin.AddSite(admin_pb2.AddSiteRequest(name="hospital-x")),
        grpc.StatusCode.ALREADY_EXISTS,
        "already exists",
    )
    worker.close()


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (
            "name: x\nbase_model: {name: m}\ntask: causal-lm\nstages: [{kind: finetune, rounds: 0}]",
            "stages.0.rounds",
        ),
        (spec_yaml(strategy="nope"), "stages.0.strategy.name"),
        (spec_yaml() + "  - kind: global\n", "stages.1.kind: a global stage must come before"),
    ],
)
def test_submit_rejects_a_bad_spec_naming_the_field(cluster: Cluster, spec: str, text: str) -> None:
    admin = cluster.admin()
    expect_error(lambda: submit(admin, spec), grpc.StatusCode.INVALID_ARGUMENT, text)


def test_admin_reads_versions_events_status_and_exports(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=1, min_sites=1))
    pull_train(a)

    # Execute
    experiment = admin.experiment(experiment_id)
    models = admin.ListModels(admin_pb2.ListModelsRequest(experiment_id=experiment_id)).models
    exported = list(
        admin.stub.ExportModel(
            admin_pb2.ModelRef(version_id=models[0].version_id), metadata=admin.metadata, timeout=10
        )
    )
    events = list(
        admin.stub.WatchEvents(
            admin_pb2.WatchEventsRequest(experiment_id=experiment_id), metadata=admin.metadata, timeout=10
        )
    )
    status = admin.GetStatus(admin_pb2.GetStatusRequest())
    workers = admin.ListWorkers(admin_pb2.ListWorkersRequest()).workers
    health = health_pb2_grpc.HealthStub(admin.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    # Assert
    assert (
        experiment.state == "running"
        and experiment.current_stage == "finetune"
        and experiment.current_round == 1
    )
    assert experiment.latest_model_version_id == models[0].version_id
    assert (
        models[0].version == 0
        and models[0].parent_id == ""
        and list(models[0].files) == ["adapter_config.json"]
    )
    kinds = [item.WhichOneof("item") for item in exported]
    assert kinds[0] == "manifest" and kinds[-1] == "file" and "chunk" in kinds
    assert exported[-1].file.content == ADAPTER_CONFIG
    assert {"experiment.submitted", "experiment.started", "round.opened", "task.leased"} <= {
        e.kind for e in events
    }
    assert all(json.loads(e.data_json) is not None for e in events)
    assert status.experiments_running == 1 and status.workers_online == 1
    assert [w.state for w in workers if w.site == "a"] == ["busy"]
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_watch_follow_streams_new_events_until_cancelled(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    stream = admin.stub.WatchEvents(
        admin_pb2.WatchEventsRequest(follow=True), metadata=admin.metadata, timeout=20
    )

    # Execute
    admin.AddSite(admin_pb2.AddSiteRequest(name="late-site"))
    first = wait_for(lambda: next(stream))
    stream.cancel()

    # Assert
    assert first.kind == "site.added"


def test_abort_cancels_tasks_and_heartbeat_says_stop(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=1, min_sites=1))
    task = pull_train(a)

    # Execute
    aborted = admin.AbortExperiment(admin_pb2.ExperimentRef(experiment_id=experiment_id, reason="test"))

    # Assert
    assert aborted.state == "aborted"
    assert a.heartbeat(task.task_id) is True
