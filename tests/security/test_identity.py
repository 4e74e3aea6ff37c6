"""Site identity over real gRPC: revocation, token rotation, the site-name rule, failed-authentication
limits and audit, bounded registrations (decision 27)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from sqlalchemy import select

from coordinator.auth import FailedAuthentications, peer_address
from coordinator.ratelimit import SlidingWindow
from coordinator.settings import CoordinatorSettings
from fedtune.errors import FedtuneError
from fedtune.v1 import admin_pb2
from storage import models
from storage.db import open_registry
from tests.support.cluster import SITES, Cluster, spec_yaml
from tests.support.fake_worker import FakeWorker
from tests.support.flow import committed_version, initialize, pull_train, train_update
from tests.support.wire import expect_error


def _events(cluster: Cluster, kind: str) -> list[tuple[str, dict[str, object]]]:
    """(message, data) of the events of `kind`, from the registry itself: a test may have locked its
    admin client out."""
    with cluster.server.services.uow_factory() as uow:
        rows = uow.session.scalars(
            select(models.Event).where(models.Event.kind == kind).order_by(models.Event.id)
        )
        return [(row.message, dict(row.data)) for row in rows]


# ---------------------------------------------------------------- revoke, rotate, list


def test_revoked_site_cannot_authenticate_and_its_round_closes_without_it(cluster: Cluster) -> None:
    # Prepare: a round for a and b; a sends its update, b holds its task
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    experiment_id, _ = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=1, sites=["a", "b"]))
    task_a, task_b = pull_train(a), pull_train(b)
    a.push(task_a.task_id, train_update(a, task_a, np.random.default_rng(1)), num_examples=5)

    # Execute
    revoked = admin.RevokeSite(admin_pb2.SiteRef(name="b", reason="token leaked"))

    # Assert: the round commits with a alone instead of waiting for b's deadline
    assert revoked.tasks_failed == 1 and revoked.site.revoked_unix > 0
    committed_version(admin, experiment_id, 1)
    (rnd,) = admin.rounds(experiment_id)
    assert rnd.updates_received == 1 and [u.site for u in rnd.site_updates] == ["a"]
    expect_error(b.register, grpc.StatusCode.PERMISSION_DENIED, "revoked")
    expect_error(lambda: b.pull(0), grpc.StatusCode.PERMISSION_DENIED, "revoked")
    expect_error(lambda: b.heartbeat(task_b.task_id), grpc.StatusCode.PERMISSION_DENIED, "revoked")
    ((_, data),) = _events(cluster, "site.revoked")
    assert data["site"] == "b" and data["reason"] == "token leaked"
    sites = {s.name: s for s in admin.ListSites(admin_pb2.ListSitesRequest()).sites}
    assert sites["b"].revoked_unix > 0 and sites["b"].workers_online == 0
    assert sites["a"].revoked_unix == 0 and sites["a"].workers_online == 1
    expect_error(
        lambda: admin.RevokeSite(admin_pb2.SiteRef(name="b")), grpc.StatusCode.FAILED_PRECONDITION, "already"
    )
    expect_error(
        lambda: admin.AddSite(admin_pb2.AddSiteRequest(name="b")), grpc.StatusCode.ALREADY_EXISTS, "revoked"
    )


def test_revoking_the_site_holding_the_init_task_hands_it_to_another_site(cluster: Cluster) -> None:
    # Prepare: only a is online when the experiment starts, so a gets the INIT task
    admin = cluster.admin()
    a = cluster.worker("a")
    admin.SubmitExperiment(admin_pb2.SubmitExperimentRequest(spec_yaml=spec_yaml(min_sites=1), start=True))
    init = a.pull(wait_seconds=5)
    assert init is not None

    # Execute
    revoked = admin.RevokeSite(admin_pb2.SiteRef(name="a"))
    b = cluster.worker("b")

    # Assert
    assert revoked.tasks_cancelled == 1
    assert b.pull(wait_seconds=5) is not None  # a new INIT task, for b


def test_rotated_token_replaces_the_old_one(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    old = cluster.worker("a")

    # Execute
    rotated = admin.RotateSiteToken(admin_pb2.SiteRef(name="a"))
    new = cluster.worker("a", token=rotated.token)

    # Assert
    assert rotated.name == "a" and rotated.token and rotated.token != SITES["a"]
    assert new.worker_id
    expect_error(lambda: old.pull(0), grpc.StatusCode.UNAUTHENTICATED, "wrong token")
    ((message, data),) = _events(cluster, "site.token_rotated")
    assert data == {"site": "a"} and rotated.token not in message
    expect_error(
        lambda: admin.RotateSiteToken(admin_pb2.SiteRef(name="nowhere")), grpc.StatusCode.NOT_FOUND, "no site"
    )


# ---------------------------------------------------------------- site names


@pytest.mark.parametrize(
    "name",
    [
        "Hospital-A",  # capitals: a case variant of hospital-a
        "hospit\u0430l-a",  # Cyrillic 'а' (U+0430) looks like Latin 'a'
        "hospital a",
        "-hospital",
        "hospital:a",
        "x" * 65,
    ],
)
def test_site_names_outside_the_safe_alphabet_are_refused_with_the_rule(cluster: Cluster, name: str) -> None:
    expect_error(
        lambda: cluster.admin().AddSite(admin_pb2.AddSiteRequest(name=name)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ASCII lowercase letters, digits",
    )


def test_site_names_are_unique_ignoring_case(cluster: Cluster) -> None:
    # Prepare: a site whose name was accepted before the rule, with capitals
    with cluster.server.services.uow_factory() as uow:
        uow.session.add(models.Site(name="Legacy-Site", token_hash="x"))
        uow.commit()

    # Execute + Assert
    expect_error(
        lambda: cluster.admin().AddSite(admin_pb2.AddSiteRequest(name="legacy-site")),
        grpc.StatusCode.ALREADY_EXISTS,
        "'Legacy-Site' already exists",
    )


@pytest.mark.parametrize("sites", ["Site-A:token", "s\u00edte-a:token", "a b:token"])
def test_seeded_site_names_obey_the_same_rule(sites: str) -> None:
    with pytest.raises(FedtuneError, match="ASCII lowercase letters"):
        CoordinatorSettings.load(env={"FEDTUNE_SITES": sites})


# ---------------------------------------------------------------- failed authentications


def test_failed_site_authentications_are_limited_per_peer_and_site_and_audited_once(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare
    cluster = cluster_factory(auth_failures_per_window=3, auth_failure_window_seconds=60)
    guesser = FakeWorker(cluster.target, "a", "guessed-token")
    unauth = grpc.StatusCode.UNAUTHENTICATED

    # Execute: three wrong guesses, then the right token from the same address
    for _ in range(3):
        expect_error(guesser.register, unauth, "wrong token")
    guesser.token = SITES["a"]

    # Assert: refused without the token being checked; another site from that address is unaffected
    expect_error(guesser.register, grpc.StatusCode.RESOURCE_EXHAUSTED, "retry after")
    assert cluster.worker("b").worker_id
    ((_, data),) = _events(cluster, "auth.failed")
    assert data["claimed"] == "a" and data["peer"] == "ipv4:127.0.0.1"
    guesser.close()


def test_failed_admin_tokens_are_limited_and_audited_once(cluster_factory: Callable[..., Cluster]) -> None:
    # Prepare
    cluster = cluster_factory(auth_failures_per_window=5)
    wrong, right = cluster.admin(token="guess"), cluster.admin()
    listing = admin_pb2.ListExperimentsRequest()

    # Execute
    for _ in range(5):
        expect_error(lambda: wrong.ListExperiments(listing), grpc.StatusCode.UNAUTHENTICATED, "admin token")

    # Assert
    expect_error(lambda: right.ListExperiments(listing), grpc.StatusCode.RESOURCE_EXHAUSTED, "retry after")
    ((message, data),) = _events(cluster, "auth.failed")
    assert data["claimed"] == "<admin>" and data["failures_in_window"] == 1
    assert "guess" not in message + json.dumps(data)  # a guessed secret never reaches the log


# ---------------------------------------------------------------- registrations


def test_register_floods_are_rate_limited_and_keep_a_bounded_number_of_workers(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare
    cluster = cluster_factory(registrations_per_window=6, workers_kept_per_site=3)
    worker = cluster.worker("a", register=False)

    # Execute
    ids = [worker.register() for _ in range(6)]

    # Assert
    expect_error(worker.register, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit 6 per 60 s")
    found = [w for w in cluster.admin().ListWorkers(admin_pb2.ListWorkersRequest()).workers if w.site == "a"]
    assert sorted(w.worker_id for w in found) == sorted(ids[-3:])
    assert [w.worker_id for w in found if w.state == "online"] == [ids[-1]]


# ---------------------------------------------------------------- the counters themselves


class _Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_refuses_past_the_limit_until_the_oldest_hit_leaves() -> None:
    # Prepare
    ticker = _Ticker()
    window = SlidingWindow(2, 60.0, now=ticker)

    # Execute
    window.hit("k")
    ticker.now = 10.0
    window.hit("k")
    blocked_for = window.retry_after("k")
    ticker.now = 60.5
    after_first_left = window.retry_after("k")

    # Assert
    assert blocked_for == pytest.approx(50.0)
    assert after_first_left == 0.0 and window.retry_after("other") == 0.0


def test_sliding_window_keeps_a_bounded_number_of_keys() -> None:
    window = SlidingWindow(1, 60.0, max_keys=3, now=_Ticker())

    for name in ("a", "b", "c", "d"):
        window.hit(name)

    assert window.retry_after("a") == 0.0  # forgotten, the oldest key
    assert all(window.retry_after(name) > 0 for name in ("b", "c", "d"))


def test_a_flood_of_claimed_names_writes_a_bounded_number_of_auth_failed_events(tmp_path: Path) -> None:
    # Prepare
    engine, uow_factory = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    failures = FailedAuthentications(uow_factory, 10, 60.0, max_events_per_window=3, now=_Ticker())

    # Execute: 20 names, 2 failures each, from one address
    for index in range(20):
        for _ in range(2):
            failures.record("ipv4:10.0.0.9:4000", f"site-{index}", "unknown site or wrong token")

    # Assert
    with uow_factory() as uow:
        kinds = list(uow.session.scalars(select(models.Event.kind)))
    engine.dispose()
    assert kinds == ["auth.failed"] * 3


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.5:53211", "ipv4:10.0.0.5"),
        ("ipv6:[::1]:4000", "ipv6:[::1]"),
        ("unix:/tmp/s", "unix:/tmp/s"),
    ],
)
def test_failures_are_counted_per_address_not_per_connection(peer: str, address: str) -> None:
    assert peer_address(peer) == address
