"""FetchTensors serves a site only the versions of experiments it takes part in (decision 27)."""

from __future__ import annotations

import grpc

from fedtune.v1 import admin_pb2
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import assert_arrays_close, initialize, pull_train
from tests.support.wire import expect_error


def test_a_site_without_a_task_in_the_experiment_cannot_fetch_its_versions(cluster: Cluster) -> None:
    # Prepare: an experiment of a and b; c is connected but not part of it
    admin = cluster.admin()
    a, b, c = cluster.worker("a"), cluster.worker("b"), cluster.worker("c")
    experiment_id, initial = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=2, sites=["a", "b"]))
    version_id = admin.experiment(experiment_id).latest_model_version_id
    for member in (a, b):
        pull_train(member)  # round 1 is open: both have a task in the experiment

    # Execute + Assert: c learns no more than for an id that does not exist
    expect_error(lambda: c.fetch(version_id), grpc.StatusCode.NOT_FOUND, f"{version_id!r} does not exist")
    expect_error(lambda: c.fetch("mv-made-up"), grpc.StatusCode.NOT_FOUND, "'mv-made-up' does not exist")
    for member in (a, b):  # only one ran the INIT task: a round task in the experiment is enough
        assert_arrays_close(member.fetch(version_id), initial)


def test_operators_still_export_any_version(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=1, min_sites=1, sites=["a"]))
    version_id = admin.experiment(experiment_id).latest_model_version_id

    # Execute
    items = list(admin.ExportModel(admin_pb2.ModelRef(version_id=version_id)))

    # Assert
    assert items[0].WhichOneof("item") == "manifest"
