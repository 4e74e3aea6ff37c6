"""A heartbeat writes only when something changes or is getting stale: a thousand idle sites then cost
reads, not commits, and never take SQLite's write lock (docs/decisions.md 28)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from coordinator.clock import FakeClock
from coordinator.notify import Notifier
from coordinator.tasks import TaskService
from fedtune.errors import FedtuneError
from storage import models
from storage.db import open_registry
from storage.memory import FakeUnitOfWorkFactory
from storage.states import TaskState
from tests.support.cluster import make_settings


@pytest.fixture
def service(tmp_path: Path) -> tuple[TaskService, FakeUnitOfWorkFactory, FakeClock, int]:
    uows, clock = FakeUnitOfWorkFactory(), FakeClock()
    settings = make_settings(
        tmp_path, "sqlite://", heartbeat_seconds=5, worker_offline_after_seconds=30, task_lease_seconds=120
    )
    site = models.Site(name="a", token_hash="h")
    uows.add_all([site])
    return TaskService(uows, clock, settings, Notifier()), uows, clock, site.id


def test_an_idle_heartbeat_commits_only_when_last_seen_gets_stale(
    service: tuple[TaskService, FakeUnitOfWorkFactory, FakeClock, int],
) -> None:
    tasks, uows, clock, site_id = service
    worker_id = tasks.register(site_id, worker_version="t", device={}, dataset_sizes={})
    commits = uows.commits
    clock.advance(5)  # 5 s later: last seen is fresh, nothing to write
    assert tasks.heartbeat(site_id, worker_id) is False
    assert uows.commits == commits
    clock.advance(5)  # 10 s: a third of the offline limit, refresh it
    tasks.heartbeat(site_id, worker_id)
    assert uows.commits == commits + 1
    assert uows.registry.table(models.Worker)[worker_id].last_seen_at == clock.now()


def test_a_task_heartbeat_extends_the_lease_at_half_and_cancels_a_closed_task(
    service: tuple[TaskService, FakeUnitOfWorkFactory, FakeClock, int],
) -> None:
    tasks, uows, clock, site_id = service
    worker_id = tasks.register(site_id, worker_version="t", device={}, dataset_sizes={})
    task = models.Task(
        id="task-1", experiment_id="exp-1", site_id=site_id, kind="train", stage_index=0,
        state=TaskState.LEASED, worker_id=worker_id, lease_expires_at=clock.now() + 120,
        deadline_at=clock.now() + 3600, created_at=clock.now(), updated_at=clock.now(),
    )  # fmt: skip
    uows.add_all([task])
    assert tasks.heartbeat(site_id, worker_id, "task-1") is False  # the worker takes the task: a write
    commits = uows.commits
    clock.advance(5)
    assert tasks.heartbeat(site_id, worker_id, "task-1") is False
    assert uows.commits == commits, "a fresh lease needs no write"
    clock.advance(60)  # past half the lease
    tasks.heartbeat(site_id, worker_id, "task-1")
    assert uows.commits == commits + 1 and task.lease_expires_at == clock.now() + 120
    task.state = TaskState.DONE
    assert tasks.heartbeat(site_id, worker_id, "task-1") is True  # stop working on it


def test_a_reader_reads_while_a_writer_holds_the_lock_and_cannot_commit(tmp_path: Path) -> None:
    # Prepare: a writer holds SQLite's write lock (BEGIN IMMEDIATE) for a while
    engine, uows = open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with uows() as uow:
            uow.session.execute(text("UPDATE sites SET name = name"))
            holding.set()
            release.wait(10)
            uow.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    assert holding.wait(10)
    # Execute
    started = time.monotonic()
    with uows.reader() as uow:
        assert uow.sites.by_name("nobody") is None
        read_s = time.monotonic() - started
        with pytest.raises(RuntimeError, match="read-only"):
            uow.commit()
    release.set()
    thread.join()
    engine.dispose()
    # Assert: the read did not queue behind the writer
    assert read_s < 1.0


def test_a_sites_credentials_are_read_once_and_forgotten_when_they_change(tmp_path: Path) -> None:
    # Prepare: count the registry reads of authentication
    from coordinator.auth import SiteAuth, hash_token
    from coordinator.sites import SiteService

    uows = FakeUnitOfWorkFactory()
    reads = {"n": 0}
    reader = uows.reader

    def counting_reader() -> object:
        reads["n"] += 1
        return reader()

    uows.reader = counting_reader  # type: ignore[method-assign]
    uows.add_all([models.Site(name="a", token_hash=hash_token("secret"))])
    auth = SiteAuth(uows, admin_token=None)
    sites = SiteService(uows, FakeClock(), on_change=auth.forget)
    # Execute + Assert: many calls, one read
    site_id = auth.authenticate_site("a", "secret")
    for _ in range(20):
        assert auth.authenticate_site("a", "secret") == site_id
    assert reads["n"] == 1
    # a rotated token works at once and the old one does not
    token = sites.rotate_token("a")
    assert auth.authenticate_site("a", token) == site_id
    with pytest.raises(FedtuneError):
        auth.authenticate_site("a", "secret")
