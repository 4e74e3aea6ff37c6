"""A disk that fills up while a round commits: the round waits with its updates and commits later.

The failure is injected at the blob store boundary: a LocalBlobStore whose puts fail with ENOSPC
(wrapped exactly as the real store wraps an OSError) while the test says the disk is full. The
coordinator is the real one over gRPC, on SQLite and (with FEDTUNE_TEST_DATABASE_URL) PostgreSQL.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from admin.render import rounds_table
from coordinator.commit_retry import CommitRetries, describe_error, is_transient_io_error
from coordinator.settings import CoordinatorSettings
from coordinator.strategies.weighted_mean import WeightedMeanStrategy
from fedtune.errors import ErrorCode, FedtuneError
from storage import models
from storage.blobs import LocalBlobStore, _storage_error
from tests.support.cluster import Cluster, spec_yaml
from tests.support.fake_worker import FakeWorker
from tests.support.flow import (
    assert_arrays_close,
    committed_version,
    initialize,
    pull_train,
    train_update,
    weighted_mean,
)
from tests.support.waiting import wait_for

RETRY = {"commit_retry_initial_seconds": 0.05, "commit_retry_max_seconds": 0.2}


class Disk:
    """Whether the (pretend) disk under the blob store is full, and how many puts it refused."""

    full = False
    refused = 0


class DiskFullBlobStore(LocalBlobStore):
    def put_stream(self, chunks: Iterable[bytes]) -> str:
        if Disk.full:
            Disk.refused += 1
            full = OSError(errno.ENOSPC, "No space left on device")
            raise _storage_error("write a blob", full) from full  # as LocalBlobStore._write does
        return super().put_stream(chunks)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> type[Disk]:
    monkeypatch.setattr("coordinator.bootstrap.LocalBlobStore", DiskFullBlobStore)
    Disk.full, Disk.refused = False, 0
    return Disk


def _two_updates(
    workers: list[FakeWorker], rng: np.random.Generator
) -> list[tuple[dict[str, np.ndarray], int]]:
    pushed = []
    for worker, n in zip(workers, (3, 17), strict=True):
        task = pull_train(worker)
        arrays = train_update(worker, task, rng)
        worker.push(task.task_id, arrays, num_examples=n)
        pushed.append((arrays, n))
    return pushed


def _round_row(cluster: Cluster, experiment_id: str) -> models.Round:
    with cluster.server.services.uow_factory() as uow:
        row = uow.session.scalars(
            select(models.Round).where(models.Round.experiment_id == experiment_id)
        ).one()
        uow.session.expunge(row)
        return row


def _events(cluster: Cluster, kind: str) -> list[models.Event]:
    with cluster.server.services.uow_factory() as uow:
        rows = list(uow.session.scalars(select(models.Event).where(models.Event.kind == kind)))
        for row in rows:
            uow.session.expunge(row)
        return rows


def _verified_updates(cluster: Cluster, experiment_id: str) -> list[Path]:
    round_id = _round_row(cluster, experiment_id).id
    with cluster.server.services.uow_factory() as uow:
        rows = uow.session.scalars(select(models.Update).where(models.Update.round_id == round_id))
        return [Path(u.spool_path) for u in rows if u.state in ("verified", "folded")]


def _render(table: Table) -> str:
    console = Console(record=True, width=400)
    console.print(table)
    return console.export_text()


def _wait_until_waiting(cluster: Cluster, experiment_id: str) -> models.Round:
    def waiting() -> models.Round | None:
        row = _round_row(cluster, experiment_id)
        return (
            row
            if row.reason.startswith("waiting to commit") and _events(cluster, "round.commit_retry")
            else None
        )

    return wait_for(waiting)


def test_commit_on_a_full_disk_waits_keeps_the_updates_and_commits_once_space_is_back(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
    disk: type[Disk],
) -> None:
    # Prepare: version 0 stored, then the disk fills up before the round's two updates arrive
    cluster = cluster_factory(**RETRY)
    admin = cluster.admin()
    workers = [cluster.worker(s) for s in ("a", "b")]
    experiment_id, _ = initialize(admin, workers, spec_yaml(rounds=1, min_sites=2))
    disk.full = True

    # Execute: both updates arrive, the commit fails on ENOSPC and keeps failing for a while
    pushed = _two_updates(workers, np.random.default_rng(5))
    waiting = _wait_until_waiting(cluster, experiment_id)
    wait_for(lambda: disk.refused >= 3)  # retried, with backoff, not given up

    # Assert (while full): the round waits, its updates and spool files are all kept, the operator sees why
    assert waiting.state == "aggregating"
    assert "No space left on device" in waiting.reason
    assert admin.experiment(experiment_id).state == "running"
    spooled = _verified_updates(cluster, experiment_id)
    assert len(spooled) == 2 and all(path.is_file() for path in spooled)
    event = _events(cluster, "round.commit_retry")[0]
    assert event.data["action"] == "commit" and "No space left" in event.data["error"]
    assert len(_events(cluster, "round.commit_retry")) < disk.refused  # announced once per error, not per try
    listed = admin.rounds(experiment_id)[0]
    assert listed.state == "aggregating" and "waiting to commit" in _render(rounds_table([listed]))

    # Execute: space is back
    disk.full = False
    version_id = committed_version(admin, experiment_id, 1)

    # Assert: exactly the weighted mean of both accepted updates, nothing lost, reason cleared
    assert_arrays_close(workers[0].fetch(version_id), weighted_mean(pushed))
    rnd = admin.rounds(experiment_id)[0]
    assert rnd.updates_received == 2 and rnd.reason == ""
    assert wait_for(lambda: admin.experiment(experiment_id).state == "completed")


def test_a_coordinator_restarted_while_a_commit_waits_commits_the_round(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
    disk: type[Disk],
) -> None:
    # Prepare: a round waiting to commit on a full disk
    cluster = cluster_factory(**RETRY)
    admin = cluster.admin()
    workers = [cluster.worker(s) for s in ("a", "b")]
    experiment_id, _ = initialize(admin, workers, spec_yaml(rounds=1, min_sites=2))
    disk.full = True
    pushed = _two_updates(workers, np.random.default_rng(9))
    _wait_until_waiting(cluster, experiment_id)

    # Execute: the coordinator stops while the round waits; space is freed; it starts again
    cluster.server.stop(0)
    disk.full = False
    cluster.restart()
    admin = cluster.admin()
    version_id = committed_version(admin, experiment_id, 1)

    # Assert
    assert_arrays_close(cluster.worker("a").fetch(version_id), weighted_mean(pushed))
    assert admin.rounds(experiment_id)[0].updates_received == 2


def test_a_deterministic_strategy_error_still_fails_the_round(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a strategy whose finish_round has a bug (not I/O)
    def broken(self: WeightedMeanStrategy) -> None:
        raise ValueError("weights do not sum to one")

    cluster = cluster_factory(**RETRY)
    admin = cluster.admin()
    workers = [cluster.worker(s) for s in ("a", "b")]
    experiment_id, _ = initialize(admin, workers, spec_yaml(rounds=1, min_sites=2))
    monkeypatch.setattr(WeightedMeanStrategy, "finish_round", broken)

    # Execute
    _two_updates(workers, np.random.default_rng(1))
    failed = wait_for(lambda: next((r for r in admin.rounds(experiment_id) if r.state == "failed"), None))

    # Assert: failed at once with the error, no retry announced
    assert failed.reason == "aggregation failed: ValueError: weights do not sum to one"
    assert admin.experiment(experiment_id).state == "failed"
    assert _events(cluster, "round.commit_retry") == []


def test_only_io_and_database_failures_count_as_transient() -> None:
    # Prepare
    def wrapped(err: OSError) -> FedtuneError:
        try:
            raise _storage_error("write a blob", err) from err
        except FedtuneError as wrapped_err:
            return wrapped_err

    # Execute / Assert
    assert is_transient_io_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient_io_error(wrapped(OSError(errno.EIO, "Input/output error")))
    assert is_transient_io_error(
        OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    )
    assert not is_transient_io_error(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient_io_error(FedtuneError(ErrorCode.ALREADY_EXISTS, "version 2 taken"))
    assert not is_transient_io_error(ValueError("bug"))
    assert len(describe_error(OSError(errno.ENOSPC, "x" * 5000))) <= 300


def test_commit_retries_back_off_exponentially_up_to_the_cap() -> None:
    # Prepare
    retries = CommitRetries(initial_seconds=1.0, max_seconds=60.0)

    # Execute
    decisions = [retries.failed("r1", now=float(i), error="disk full") for i in range(9)]

    # Assert
    assert [d.delay_seconds for d in decisions] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert [d.announce for d in decisions] == [True] + [False] * 8
    assert not retries.due("r1", now=8.0) and retries.due("r1", now=68.0)
    assert retries.forget("r1") == 9 and retries.due("r1", now=0.0)


def test_commit_retry_settings_refuse_a_cap_below_the_first_wait(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="commit_retry_max_seconds"):
        CoordinatorSettings(data_dir=tmp_path, commit_retry_initial_seconds=5, commit_retry_max_seconds=1)
