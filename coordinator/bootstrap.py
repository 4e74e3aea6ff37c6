"""Wire everything in one place: settings in, concrete services out (tests pass temp dirs / a fake clock)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from coordinator.aggregation import RoundAggregator
from coordinator.auth import SiteAuth
from coordinator.clock import Clock, SystemClock
from coordinator.collector import StorageCollector
from coordinator.downloads import DownloadService
from coordinator.experiments import ExperimentService
from coordinator.metrics import CoordinatorMetrics
from coordinator.notify import Notifier
from coordinator.queries import AdminQueries
from coordinator.scheduler import Scheduler
from coordinator.secagg.submit import SecAggSubmissions
from coordinator.settings import CoordinatorSettings
from coordinator.sites import SiteService
from coordinator.tasks import TaskService
from coordinator.uploads import UploadService
from storage.blobs import BlobStore, LocalBlobStore
from storage.db import open_registry
from storage.uow import UnitOfWorkFactory

log = logging.getLogger("fedtune.coordinator")


@dataclass
class Services:
    settings: CoordinatorSettings
    engine: Engine
    uow_factory: UnitOfWorkFactory
    blobs: BlobStore
    clock: Clock
    notifier: Notifier
    auth: SiteAuth
    sites: SiteService
    experiments: ExperimentService
    aggregator: RoundAggregator
    scheduler: Scheduler
    tasks: TaskService
    uploads: UploadService
    downloads: DownloadService
    queries: AdminQueries
    metrics: CoordinatorMetrics
    collector: StorageCollector
    secagg: SecAggSubmissions

    def close(self) -> None:
        self.scheduler.close()
        self.collector.close()
        self.notifier.close()
        self.engine.dispose()


def bootstrap(settings: CoordinatorSettings, *, clock: Clock | None = None) -> Services:
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    engine, uow_factory = open_registry(settings.resolved_database_url)
    blobs = LocalBlobStore(data_dir / "blobs")
    blobs.cleanup_partial()
    notifier = Notifier()
    # every committed change wakes whoever it names (the scheduler, event watchers, sites' long-polls)
    uow_factory.after_commit = lambda wakeups: notifier.notify(wakeups.sites, all_sites=wakeups.all_sites)
    auth = SiteAuth(
        uow_factory,
        settings.admin_token,
        tls_mode=settings.tls_mode,
        failures_per_window=settings.auth_failures_per_window,
        failure_window_seconds=settings.auth_failure_window_seconds,
    )
    sites = SiteService(uow_factory, clock, on_change=auth.forget)
    sites.seed_sites(settings.seeded_sites())
    metrics = CoordinatorMetrics()
    aggregator = RoundAggregator(uow_factory, blobs, data_dir, clock, metrics=metrics)
    aggregator.cleanup_closed_rounds()
    collector = StorageCollector(
        uow_factory,
        blobs,
        data_dir,
        clock,
        keep_last=settings.retention_keep_last,
        grace_seconds=settings.gc_grace_seconds,
    )
    services = Services(
        settings=settings,
        engine=engine,
        uow_factory=uow_factory,
        blobs=blobs,
        clock=clock,
        notifier=notifier,
        auth=auth,
        sites=sites,
        experiments=ExperimentService(uow_factory, clock),
        aggregator=aggregator,
        scheduler=Scheduler(uow_factory, clock, settings, aggregator, notifier, collector),
        tasks=TaskService(uow_factory, clock, settings, notifier),
        uploads=UploadService(uow_factory, blobs, aggregator, clock, settings),
        downloads=DownloadService(uow_factory, blobs, settings.chunk_bytes, settings.max_chunk_bytes),
        queries=AdminQueries(uow_factory, clock, settings.worker_offline_after_seconds),
        metrics=metrics,
        collector=collector,
        secagg=SecAggSubmissions(uow_factory, aggregator, clock),
    )
    metrics.watch_registry(lambda: _rounds_by_state(uow_factory), sites.list_sites, clock.now)
    if auth.admin_open:
        log.warning("no admin token set: the Admin API is open to anyone who can reach this port")
    elif settings.admin_token is None and settings.tls_mode == "tls":
        log.error("admin credential: %s", auth.admin_credential())
    else:
        log.info("admin credential: %s", auth.admin_credential())
    return services


def _rounds_by_state(uow_factory: UnitOfWorkFactory) -> dict[str, int]:
    with uow_factory() as uow:
        return uow.rounds.count_by_state()
