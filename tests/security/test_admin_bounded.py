"""Admin responses stay bounded whatever the sites sent: ListRounds pages and bounds each round's site
updates and metrics, WatchEvents bounds each event. (300,000 metric keys made ListRounds take 27 s and
fail; a 17 MB error string broke `admin watch`.) Rows written before the door existed are the input."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import select

import coordinator.queries
from admin.client import AdminClient
from fedtune import limits
from fedtune.v1 import admin_pb2
from storage import models
from tests.support.cluster import ADMIN_TOKEN, Cluster, spec_yaml
from tests.support.flow import committed_version, initialize, pull_train, train_update
from tests.support.waiting import wait_for


def one_round_done(cluster: Cluster) -> str:
    """An experiment of 2 rounds whose round 1 committed (round 2 is collecting)."""
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=2, min_sites=1, sites=["a"]))
    task = pull_train(a)
    a.push(task.task_id, train_update(a, task, np.random.default_rng(1)), num_examples=4)
    committed_version(admin, experiment_id, 1)
    wait_for(lambda: len(admin.rounds(experiment_id)) == 2)  # the scheduler opens round 2 after the commit
    return experiment_id


def test_list_rounds_bounds_metrics_stored_before_the_door(cluster_factory: Callable[..., Cluster]) -> None:  # noqa: F811
    # Prepare: the update and round rows hold 20,000 metric keys (as a site could store them before)
    cluster = cluster_factory()
    experiment_id = one_round_done(cluster)
    flood = {f"m{i:05d}": 1.0 for i in range(20_000)}
    with cluster.server.services.uow_factory() as uow:
        update = uow.session.scalars(select(models.Update)).one()
        update.metrics = flood
        rnd = uow.session.get(models.Round, update.round_id)
        assert rnd is not None
        rnd.metrics = flood
        uow.commit()

    # Execute
    rounds = cluster.admin().rounds(experiment_id)

    # Assert
    listed = rounds[0].site_updates[0].metrics
    assert 0 < len(listed) <= limits.MAX_METRICS
    assert len(rounds[0].metrics) <= limits.MAX_METRICS


def test_list_rounds_pages_by_count_and_by_bytes(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    cluster = cluster_factory()
    experiment_id = one_round_done(cluster)
    admin = cluster.admin()

    # Execute: one round per page
    first = admin.ListRounds(admin_pb2.ListRoundsRequest(experiment_id=experiment_id, page_size=1))
    second = admin.ListRounds(
        admin_pb2.ListRoundsRequest(
            experiment_id=experiment_id, page_size=1, page_token=first.next_page_token
        )
    )

    # Assert
    assert [r.round for r in first.rounds] == [1] and first.next_page_token
    assert [r.round for r in second.rounds] == [2] and second.next_page_token == ""

    # Execute: a page also ends at the byte budget; the admin client follows the pages
    monkeypatch.setattr(coordinator.queries, "ROUNDS_PAGE_BYTES", 1)
    by_bytes = admin.ListRounds(admin_pb2.ListRoundsRequest(experiment_id=experiment_id))
    with AdminClient(cluster.target, admin_token=ADMIN_TOKEN) as client:
        everything = client.list_rounds(experiment_id)

    # Assert
    assert len(by_bytes.rounds) == 1 and by_bytes.next_page_token
    assert [r.round for r in everything] == [1, 2]


def test_watch_events_bounds_each_event(cluster_factory: Callable[..., Cluster]) -> None:  # noqa: F811
    # Prepare: an event with a 1 MB message and 1 MB of data (a stored error string)
    cluster = cluster_factory()
    with cluster.server.services.uow_factory() as uow:
        uow.session.add(
            models.Event(kind="task.failed", message="x" * (1 << 20), data={"error": "y" * (1 << 20)})
        )
        uow.commit()
    admin = cluster.admin()

    # Execute
    events = list(admin.WatchEvents(admin_pb2.WatchEventsRequest(follow=False)))

    # Assert
    flood = [e for e in events if e.kind == "task.failed"]
    assert len(flood) == 1
    assert len(flood[0].message) <= limits.MAX_EVENT_MESSAGE_CHARS
    assert len(flood[0].data_json) <= limits.MAX_EVENT_DATA_BYTES
    assert json.loads(flood[0].data_json)["truncated"] is True
