"""Garbage collection of versions' tensors, blobs and spool files nothing needs (docs/decisions.md 33).

A collection, in this order, each step safe to stop at (a kill -9 leaves rows whose blobs all exist,
plus garbage the next run removes):
1. One transaction: the versions the retention policy prunes (``coordinator/retention.py``) are
   marked pruned, each stage's server states but the newest are deleted.
2. Blobs no row needs (``uow.versions.referenced_blob_digests``, read after step 1's commit) are
   deleted one at a time, each under the blob store's install lock and only when nobody put it
   within `gc_grace_seconds`: a commit puts its blobs before its row, and a put of content already
   stored refreshes its time, so a blob an in-flight commit will name is never taken.
3. Spool and work folders of rounds no longer open, and spool files of tasks that ended without an
   update (or of INIT tasks no longer live), untouched for the grace period.
The scheduler runs one every `gc_interval_seconds` (0 = only on demand: ``fedtune admin storage gc``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from coordinator.clock import Clock
from coordinator.retention import versions_to_prune
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import ExperimentStorageRecord, GcReportRecord, StorageUsageRecord
from storage import models
from storage.blobs import BlobStore
from storage.registry import record_event
from storage.states import LIVE_TASK_STATES, TaskState
from storage.uow import UnitOfWork, UowFactory

log = logging.getLogger("fedtune.coordinator.collector")
MAX_LISTED_PRUNED = 1000  # a report names at most this many pruned versions
# Spool files of a task in these states (or of no task) are never needed; a done task's is its update.
_SPOOL_DEAD_TASK_STATES = (TaskState.FAILED, TaskState.CANCELLED, None)


class StorageCollector:
    def __init__(
        self,
        uow_factory: UowFactory,
        blobs: BlobStore,
        data_dir: Path,
        clock: Clock,
        *,
        keep_last: int,
        grace_seconds: float,
    ) -> None:
        self._uow_factory = uow_factory
        self._blobs = blobs
        self._data_dir = Path(data_dir)
        self._clock = clock
        self._keep_last = keep_last
        self._grace = grace_seconds
        self._running = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fedtune-gc")

    # ----------------------------------------------------------------- collection
    def submit_periodic(self) -> None:
        """A collection on the collector's own thread (the scheduler's periodic GC); skipped if one runs."""
        if not self._running.locked():
            self._pool.submit(self._periodic)

    def _periodic(self) -> None:
        try:
            self.collect()
        except FedtuneError as err:
            if err.code is not ErrorCode.BUSY:
                log.warning("periodic garbage collection failed: %s", err)
        except Exception:
            log.exception("periodic garbage collection failed")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def collect(self, *, dry_run: bool = False) -> GcReportRecord:
        """Apply the policy, then delete what nothing needs (dry_run: count it, change nothing)."""
        if not self._running.acquire(blocking=False):
            raise FedtuneError(
                ErrorCode.BUSY, "a garbage collection is already running; try again when it has ended"
            )
        try:
            return self._collect(dry_run)
        finally:
            self._running.release()

    def _collect(self, dry_run: bool) -> GcReportRecord:
        started, now = time.monotonic(), self._clock.now()
        with self._uow_factory() as uow:  # 1. rows first
            pruned = [v for e in uow.experiments.all() for v in versions_to_prune(uow, e.id, self._keep_last)]
            pruned_ids = [version.id for version in pruned]
            for version in pruned:
                version.pruned_at = now
            states = uow.versions.prune_strategy_states(dry_run=dry_run)
            uow.flush()
            if dry_run:  # what the blob sweep would see after the commit; rolled back on exit
                referenced = uow.versions.referenced_blob_digests()
            else:
                uow.commit()
        if not dry_run:
            with self._uow_factory() as uow:
                referenced = uow.versions.referenced_blob_digests()
        cutoff = time.time() - self._grace  # file times are the filesystem's, not the injectable clock's
        deleted, freed, young = self._sweep_blobs(referenced, cutoff, dry_run)  # 2.
        stale = self._stale_spool(cutoff)  # 3.
        for path, _ in [] if dry_run else stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        report = GcReportRecord(
            dry_run=dry_run,
            versions_pruned=len(pruned_ids),
            pruned_version_ids=tuple(pruned_ids[:MAX_LISTED_PRUNED]),
            strategy_states_deleted=states,
            blobs_deleted=deleted,
            blob_bytes_freed=freed,
            blobs_kept_young=young,
            spool_entries_deleted=len(stale),
            spool_bytes_freed=sum(size for _, size in stale),
            seconds=time.monotonic() - started,
        )
        if not dry_run and (pruned_ids or states or deleted or stale):
            self._announce(report)
        return report

    def _sweep_blobs(self, referenced: set[str], cutoff: float, dry_run: bool) -> tuple[int, int, int]:
        deleted = freed = young = 0
        for blob in self._blobs.iter_blobs():
            if blob.digest in referenced:
                continue
            if blob.put_at >= cutoff:
                young += 1
                continue
            size = blob.size if dry_run else self._blobs.delete_if_older(blob.digest, cutoff)
            if size is None:
                young += 1  # put again since it was listed
            else:
                deleted, freed = deleted + 1, freed + size
        return deleted, freed, young

    def _stale_spool(self, cutoff: float) -> list[tuple[Path, int]]:
        """Spool/work entries no open round needs and untouched since `cutoff`, with their bytes."""
        parents = (self._data_dir / "spool", self._data_dir / "work")
        listed = {parent: sorted(parent.iterdir()) for parent in parents if parent.is_dir()}
        stale: list[Path] = []
        with self._uow_factory() as uow:  # read after listing: a round open now keeps its folder
            open_ids = uow.rounds.open_ids()
            for parent, children in listed.items():
                for child in children:
                    if child.name == "init":  # INIT uploads: a live task's file may still grow
                        stale += [f for f in _files(child) if _task_state(uow, f) not in LIVE_TASK_STATES]
                    elif child.name not in open_ids:  # a closed round's folder: crash leftovers
                        stale.append(child)
                    elif parent.name == "spool":  # an open round: a done task's file is its update
                        stale += [f for f in _files(child) if _task_state(uow, f) in _SPOOL_DEAD_TASK_STATES]
        return [(path, _size(path)) for path in stale if _newest(path) < cutoff]

    def _announce(self, report: GcReportRecord) -> None:
        message = (
            f"storage collected: {report.versions_pruned} version(s) pruned, {report.blobs_deleted} blob(s) "
            f"({report.blob_bytes_freed} bytes) and {report.spool_entries_deleted} spool entries "
            f"({report.spool_bytes_freed} bytes) deleted"
        )
        log.info(message)
        with self._uow_factory() as uow:
            pruned = list(report.pruned_version_ids[:50])
            record_event(uow, "storage.collected", message, data={"pruned": pruned})
            uow.commit()

    # ----------------------------------------------------------------- usage
    def usage(self) -> StorageUsageRecord:
        sizes = {blob.digest: blob.size for blob in self._blobs.iter_blobs()}
        stale_spool = sum(size for _, size in self._stale_spool(time.time() - self._grace))
        experiments: list[ExperimentStorageRecord] = []
        to_prune = 0
        with self._uow_factory() as uow:
            referenced = uow.versions.referenced_blob_digests()
            for experiment in uow.experiments.all():
                versions = uow.versions.ordered(experiment.id)
                digests = {d for v in versions if v.pruned_at is None for d in _digests(v)}
                open_rounds = uow.rounds.open_for_experiment(experiment.id)
                spool = sum(_size(self._data_dir / "spool" / r.id) for r in open_rounds)
                to_prune += len(versions_to_prune(uow, experiment.id, self._keep_last))
                experiments.append(
                    ExperimentStorageRecord(
                        experiment_id=experiment.id,
                        name=experiment.name,
                        versions=len(versions),
                        versions_pruned=sum(1 for v in versions if v.pruned_at is not None),
                        version_bytes=sum(sizes.get(d, 0) for d in digests),
                        spool_bytes=spool,
                    )
                )
        unreferenced = [size for digest, size in sizes.items() if digest not in referenced]
        return StorageUsageRecord(
            blob_bytes=sum(sizes.values()),
            blob_count=len(sizes),
            unreferenced_bytes=sum(unreferenced),
            unreferenced_blobs=len(unreferenced),
            spool_bytes=_size(self._data_dir / "spool"),
            stale_spool_bytes=stale_spool,
            work_bytes=_size(self._data_dir / "work"),
            retention_keep_last=self._keep_last,
            versions_to_prune=to_prune,
            experiments=tuple(experiments),
        )


def _digests(version: models.ModelVersion) -> set[str]:
    return {version.blob_digest, *(str(d) for d in (version.files or {}).values())}


def _task_state(uow: UnitOfWork, path: Path) -> str | None:
    task = uow.tasks.get(path.name.split(".", 1)[0])
    return task.state if task is not None else None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _walk(path: Path) -> Iterator[Path]:
    yield path
    if path.is_dir():
        yield from path.rglob("*")


def _size(path: Path) -> int:
    total = 0
    for item in _walk(path):
        try:
            total += item.stat().st_size if item.is_file() else 0
        except FileNotFoundError:
            continue
    return total


def _newest(path: Path) -> float:
    newest = 0.0
    for item in _walk(path):
        try:
            newest = max(newest, item.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest
