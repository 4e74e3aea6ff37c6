"""A spec that can never start is refused; one that waits for sites says why, once.

Over the real coordinator (sites a, b, c seeded) on SQLite and, with FEDTUNE_TEST_DATABASE_URL,
PostgreSQL.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import grpc
import pytest
from rich.console import Console
from sqlalchemy import select

from admin.render import experiment_details
from fedtune.v1 import admin_pb2
from storage import models
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import submit
from tests.support.waiting import wait_for


def _waiting_events(cluster: Cluster, experiment_id: str) -> list[str]:
    with cluster.server.services.uow_factory() as uow:
        return list(
            uow.session.scalars(
                select(models.Event.message)
                .where(models.Event.experiment_id == experiment_id, models.Event.kind == "experiment.waiting")
                .order_by(models.Event.id)
            )
        )


def _shown(experiment: admin_pb2.Experiment) -> str:
    console = Console(record=True, width=400, file=io.StringIO())
    console.print(experiment_details(experiment))
    return console.export_text()


def test_a_selection_naming_unknown_sites_is_refused_at_submit(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare
    cluster = cluster_factory()
    admin = cluster.admin()

    # Execute
    with pytest.raises(grpc.RpcError) as refused:
        submit(admin, spec_yaml(min_sites=2, sites=["a", "zeta", "omega"]))

    # Assert: INVALID_ARGUMENT naming the unknown sites and how to add them; nothing stored
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "stages.0.selection.sites: omega, zeta not registered" in details
    assert "fedtune admin sites add" in details
    assert list(admin.ListExperiments(admin_pb2.ListExperimentsRequest()).experiments) == []


def test_an_experiment_waiting_for_sites_says_why_once_and_clears_when_it_starts(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare: min_sites above the 3 registered sites, and no worker online yet
    cluster = cluster_factory()
    admin = cluster.admin()
    experiment_id = submit(admin, spec_yaml(rounds=1, min_sites=4))

    # Execute / Assert 1: no worker, so no site for the INIT task: one event, many ticks
    first = wait_for(lambda: admin.experiment(experiment_id).waiting_reason)
    time.sleep(0.3)  # ~6 scheduler ticks
    assert _waiting_events(cluster, experiment_id) == [first]
    assert "initial version of finetune" in first and "0 site(s) online, 3 registered" in first

    # Execute / Assert 2: a and b come online, a builds version 0, the round cannot open: 4 > 3 registered
    a, b = cluster.worker("a"), cluster.worker("b")
    worker, init = wait_for(lambda: next(((w, t) for w in (a, b) if (t := w.pull(wait_seconds=0.2))), None))
    worker.do_init(init)
    waiting = wait_for(lambda: "round 1" in (r := admin.experiment(experiment_id).waiting_reason) and r)
    time.sleep(0.3)
    assert _waiting_events(cluster, experiment_id)[1:] == [waiting]
    assert "min_sites=4, 2 site(s) online (a, b), 3 registered" in waiting
    assert "register 1 more" in waiting
    assert "waiting" in _shown(admin.experiment(experiment_id)) and "register 1 more" in _shown(
        admin.experiment(experiment_id)
    )

    # Execute / Assert 3: a fourth site is added and c and d come online: the round opens, no reason left
    token = admin.AddSite(admin_pb2.AddSiteRequest(name="d")).token
    cluster.worker("c")
    cluster.worker("d", token=token)
    wait_for(lambda: admin.rounds(experiment_id))
    assert admin.experiment(experiment_id).waiting_reason == ""
    assert admin.rounds(experiment_id)[0].tasks_total == 4


def test_site_ranks_naming_an_unknown_site_is_refused_at_submit(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    admin = cluster_factory().admin()
    ranked = spec_yaml(min_sites=2, strategy="hetero_lora").replace(
        "task: causal-lm", "task: causal-lm\npeft: {method: lora, r: 8, site_ranks: {a: 4, zeta: 2}}"
    )

    with pytest.raises(grpc.RpcError) as refused:
        submit(admin, ranked)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "peft.site_ranks: zeta not registered" in (refused.value.details() or "")
    submit(admin, ranked.replace(", zeta: 2", ""))  # the known sites alone are accepted
