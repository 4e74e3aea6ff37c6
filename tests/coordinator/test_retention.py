"""Retention and garbage collection (decision 33): the policy keeps exactly what it says, the collector
deletes only what no row needs, survives a kill -9, and a long run's blobs stay bounded.

The collector runs against a real registry (SQLite and PostgreSQL) and a real blob store on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from coordinator.clock import SystemClock
from coordinator.collector import StorageCollector
from coordinator.downloads import DownloadService
from coordinator.retention import set_pin
from fedtune.errors import FedtuneError
from fedtune.v1 import admin_pb2
from storage import models
from storage.blobs import LocalBlobStore
from storage.db import open_registry
from storage.registry import store_model_version
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import committed_version, initialize, pull_train, train_update
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SIDE_FILE = {"adapter_config.json": b'{"r": 4}'}  # the same bytes in every version: one shared blob
OLD = time.time() - 7200  # a file time past any grace period used here


class Registry:
    """A registry (fresh database) and a blob store in a data dir, with helpers to fill them."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.engine, self.uows = open_registry(database_url)
        self.blobs = LocalBlobStore(data_dir / "blobs")
        with self.uows() as uow:
            uow.experiments.add(models.Experiment(id="exp-1", name="e", spec_yaml="", spec_json="{}"))
            uow.sites.add(models.Site(name="a", token_hash="h"))
            uow.commit()
        self.versions: list[str] = []

    def add_versions(self, count: int, stage_index: int = 0) -> None:
        for _ in range(count):
            number = len(self.versions)
            tensors = self.data_dir / f"v{number}.bin"
            tensors.write_bytes(os.urandom(64) + number.to_bytes(4, "big"))
            store_model_version(
                self.uows,
                self.blobs,
                tensors_path=tensors,
                files=SIDE_FILE,
                experiment_id="exp-1",
                version=number,
                parent_id=self.versions[-1] if self.versions else None,
                stage_index=stage_index,
                stage_name=f"s{stage_index}",
                round=number,
                kind="adapter",
                manifest={},
                metrics={},
                sites=["a"],
                num_examples=1,
                move=True,
                extra=lambda _, row: self.versions.append(row.id),
            )
        age_all(self.data_dir / "blobs")

    def collector(self, keep_last: int = 3, grace: float = 60.0) -> StorageCollector:
        return StorageCollector(
            self.uows, self.blobs, self.data_dir, SystemClock(), keep_last=keep_last, grace_seconds=grace
        )

    def rows(self) -> list[SimpleNamespace]:
        """The experiment's versions, read out of their session."""
        fields = ("id", "version", "blob_digest", "files", "pruned_at", "pin_reason")
        with self.uows() as uow:
            return [
                SimpleNamespace(**{f: getattr(v, f) for f in fields}) for v in uow.versions.ordered("exp-1")
            ]

    def pruned(self) -> set[int]:
        return {v.version for v in self.rows() if v.pruned_at is not None}

    def assert_consistent(self) -> None:
        """Every row that is not pruned names blobs that exist."""
        for row in self.rows():
            if row.pruned_at is None:
                for digest in (row.blob_digest, *row.files.values()):
                    assert self.blobs.exists(str(digest)), f"version {row.version} lost blob {digest}"


def age_all(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (OLD, OLD))


@pytest.fixture
def registry(tmp_path: Path, database_url: str) -> Iterator[Registry]:
    made = Registry(tmp_path / "data", database_url)
    yield made
    made.engine.dispose()


def test_retention_keeps_exactly_what_the_policy_says(registry: Registry) -> None:
    # Prepare: stage 0 ends at version 3 (its final), stage 1 has versions 4..11; version 5 is pinned,
    # version 6 is the base of a round still open, a live task starts from version 7
    registry.add_versions(4, stage_index=0)
    registry.add_versions(8, stage_index=1)
    v = registry.versions
    set_pin(registry.uows, SystemClock(), v[5], True, "paper baseline")
    with registry.uows() as uow:
        uow.stages.add(
            models.Stage(
                experiment_id="exp-1",
                stage_index=0,
                name="s0",
                kind="global",
                rounds_total=3,
                state="completed",
                output_version_id=v[3],
            )
        )
        uow.rounds.add(
            models.Round(
                id="r-open",
                experiment_id="exp-1",
                stage_index=1,
                round=9,
                state="collecting",
                base_version_id=v[6],
                deadline_at=time.time() + 60,
            )
        )
        site = uow.sites.by_name("a")
        assert site is not None
        uow.tasks.add(
            models.Task(
                id="t-live",
                experiment_id="exp-1",
                site_id=site.id,
                kind="train",
                state="pending",
                model_version_id=v[7],
                deadline_at=time.time() + 60,
            )
        )
        uow.commit()

    # Execute: keep the last 3
    report = registry.collector(keep_last=3).collect()

    # Assert: kept = last 3 (9, 10, 11) + stage final 3 + pinned 5 + open round's base 6 + live task's 7
    assert registry.pruned() == {0, 1, 2, 4, 8}
    assert report.versions_pruned == 5 and report.blobs_deleted == 5
    registry.assert_consistent()
    digests = {row.version: row.blob_digest for row in registry.rows()}
    assert not any(registry.blobs.exists(digests[n]) for n in (0, 1, 2, 4, 8))
    assert registry.blobs.exists(registry.blobs.put_bytes(SIDE_FILE["adapter_config.json"]))
    # a pruned version is gone for fetch and export, with a message that says why
    downloads = DownloadService(registry.uows, registry.blobs, 1024, 1 << 20)
    with pytest.raises(FedtuneError) as gone:
        list(downloads.export(v[0]))
    assert "pruned by the retention policy" in gone.value.message
    # a second collection finds nothing more to do
    again = registry.collector(keep_last=3).collect()
    assert (again.versions_pruned, again.blobs_deleted) == (0, 0)


def test_an_export_pins_the_version_it_streams(registry: Registry) -> None:
    # Prepare
    registry.add_versions(5)
    downloads = DownloadService(registry.uows, registry.blobs, 1024, 1 << 20)

    # Execute: export version 0, then collect keeping 1
    with pytest.raises(FedtuneError):  # the stored bytes are not a safetensors file; the pin comes first
        list(downloads.export(registry.versions[0]))
    registry.collector(keep_last=1).collect()

    # Assert
    assert registry.pruned() == {1, 2, 3}
    assert registry.rows()[0].pin_reason == "exported"


def test_gc_removes_unreferenced_blobs_and_stale_spools_and_never_a_referenced_one(
    registry: Registry,
) -> None:
    # Prepare: versions (all kept), an old orphan blob, a young orphan blob, and spool leftovers
    registry.add_versions(3)
    orphan = registry.blobs.put_bytes(b"orphan from a commit that died")
    young = registry.blobs.put_bytes(b"a commit in flight put me a moment ago")
    os.utime(registry.blobs.local_path(orphan), (OLD, OLD))
    with registry.uows() as uow:
        site = uow.sites.by_name("a")
        assert site is not None
        uow.rounds.add(
            models.Round(
                id="r-open",
                experiment_id="exp-1",
                stage_index=0,
                round=1,
                state="collecting",
                base_version_id=registry.versions[-1],
                deadline_at=time.time() + 60,
            )
        )
        uow.rounds.add(
            models.Round(
                id="r-closed", experiment_id="exp-1", stage_index=0, round=0, state="committed", deadline_at=0
            )
        )
        for task_id, state, round_id in (
            ("t-done", "done", "r-open"),
            ("t-cancelled", "cancelled", "r-open"),
            ("t-leased", "leased", "r-open"),
            ("t-init-done", "done", None),
        ):
            uow.tasks.add(
                models.Task(
                    id=task_id,
                    experiment_id="exp-1",
                    round_id=round_id,
                    site_id=site.id,
                    kind="init" if round_id is None else "train",
                    state=state,
                    deadline_at=0,
                )
            )
        uow.commit()
    spool = registry.data_dir / "spool"
    keep = [spool / "r-open" / "t-done.safetensors", spool / "r-open" / "t-leased.safetensors.partial"]
    stale = [
        spool / "r-open" / "t-cancelled.safetensors.partial",
        spool / "init" / "t-init-done.safetensors.partial",
        spool / "r-closed" / "t-x.safetensors",
        registry.data_dir / "work" / "r-closed" / "acc.bin",
    ]
    for path in keep + stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    age_all(spool)
    age_all(registry.data_dir / "work")

    # Execute: a dry run first, then the collection
    dry = registry.collector(grace=60).collect(dry_run=True)
    untouched = registry.blobs.exists(orphan) and all(p.exists() for p in stale)
    report = registry.collector(grace=60).collect()

    # Assert
    assert untouched and dry.blobs_deleted == 1 and dry.spool_entries_deleted == 4
    assert (report.blobs_deleted, report.blobs_kept_young, report.spool_entries_deleted) == (1, 1, 4)
    assert not registry.blobs.exists(orphan) and registry.blobs.exists(young)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert not (spool / "r-closed").exists() and (spool / "r-open").exists()
    registry.assert_consistent()


def test_a_put_of_a_stored_blob_protects_it_from_the_collector(registry: Registry) -> None:
    # Prepare: an old, unreferenced blob (a pruned version's side file, say)
    digest = registry.blobs.put_bytes(b"same content")
    os.utime(registry.blobs.local_path(digest), (OLD, OLD))

    # Execute: a commit puts the same content again (its row is not committed yet), then a collection
    registry.blobs.put_bytes(b"same content")
    report = registry.collector(grace=60).collect()

    # Assert
    assert registry.blobs.exists(digest) and report.blobs_kept_young == 1


CHILD = """
import sys, time
from pathlib import Path
from coordinator.clock import SystemClock
from coordinator.collector import StorageCollector
from storage.blobs import LocalBlobStore
from storage.db import open_registry

data_dir, url = Path(sys.argv[1]), sys.argv[2]
engine, uows = open_registry(url)
blobs = LocalBlobStore(data_dir / "blobs")
delete, deleted = blobs.delete_if_older, []

def delete_then_stall(digest, cutoff):
    size = delete(digest, cutoff)
    deleted.append(digest)
    if len(deleted) == 3:
        (data_dir / "deleted-3").write_text("\\n".join(deleted))
        time.sleep(600)  # the parent kills us here, mid-collection
    return size

blobs.delete_if_older = delete_then_stall
StorageCollector(uows, blobs, data_dir, SystemClock(), keep_last=2, grace_seconds=0).collect()
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_kill_9_in_the_middle_of_gc_leaves_a_consistent_registry_and_the_next_gc_finishes(
    registry: Registry, database_url: str
) -> None:
    # Prepare: 12 versions, 10 of them past keep_last=2
    registry.add_versions(12)
    before = set(registry.blobs.iter_digests())
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # Execute: a collector in a child process, killed with SIGKILL after it deleted 3 blobs
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(registry.data_dir), database_url], env=env)
    try:
        wait_for(lambda: (registry.data_dir / "deleted-3").exists() or child.poll() is not None, timeout=60)
        assert child.poll() is None, "the collector ended before it was killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)

    # Assert: the rows were pruned first, so every kept row's blobs exist; only 3 blobs went
    assert child.returncode == -signal.SIGKILL
    assert registry.pruned() == set(range(10))
    registry.assert_consistent()
    assert len(before - set(registry.blobs.iter_digests())) == 3
    # the next collection finishes the job
    report = registry.collector(keep_last=2, grace=0).collect()
    assert report.blobs_deleted == 7 and report.versions_pruned == 0
    registry.assert_consistent()
    with registry.uows() as uow:
        assert set(registry.blobs.iter_digests()) == uow.versions.referenced_blob_digests()


def test_a_long_run_keeps_its_blobs_bounded(cluster_factory: Callable[..., Cluster]) -> None:
    # Prepare: 30 rounds of one site, keep_last=3, a collection after every round (over the Admin API)
    cluster = cluster_factory(retention_keep_last=3, gc_grace_seconds=0)
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=30, min_sites=1, sites=["a"]))
    rng = np.random.default_rng(9)
    counts: list[int] = []

    # Execute
    for number in range(1, 31):
        task = pull_train(a)
        a.push(task.task_id, train_update(a, task, rng), num_examples=2)
        committed_version(admin, experiment_id, number)
        admin.CollectGarbage(admin_pb2.CollectGarbageRequest())
        counts.append(admin.GetStorageUsage(admin_pb2.GetStorageUsageRequest()).blob_count)

    # Assert: flat at the kept versions' blobs (3 tensors + the INIT side files) from round 4 on
    models_list = admin.ListModels(admin_pb2.ListModelsRequest(experiment_id=experiment_id)).models
    kept = [m for m in models_list if not m.pruned_unix]
    assert len(models_list) == 31 and len(kept) == 3  # the last 3 (the stage's final is the latest)
    assert max(counts[3:]) == min(counts[3:]) <= 3 + len(kept[-1].files), counts
    wait_for(lambda: admin.experiment(experiment_id).state == "completed")
    # the latest version is still fetchable; an old one answers NOT_FOUND, saying why
    assert a.fetch(kept[-1].version_id)
    with pytest.raises(grpc.RpcError) as gone:
        a.fetch(models_list[1].version_id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND and "pruned" in (gone.value.details() or "")
