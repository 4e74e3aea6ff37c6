"""The coordinator's Prometheus metrics (docs/decisions.md 32): one registry per ``Services``.

Counted where it happens, read at scrape time where the state already lives:

- ``fedtune_updates_total{outcome,reason}``: the PushUpdate servicer. ``accepted``; ``rejected`` (reason:
  the error code, ``strategy`` for a strategy's refusal); ``interrupted`` (``idle_timeout``,
  ``incomplete_stream``, ``cancelled``: the stream broke and a resume continues it).
- ``fedtune_bytes_received_total{method}`` / ``fedtune_bytes_sent_total{method}``: each PushUpdate message
  in, each FetchTensors / ExportModel message out (its protobuf size).
- ``fedtune_fold_seconds`` / ``fedtune_commit_seconds``: ``RoundAggregator``, the strategy weighing and
  folding a new update; a round's commit (finish_round, the version's blobs, the SQL transaction).
- ``fedtune_rpc_errors_total{method,code,reason}``: ``fedtune.errors.aio_rpc_errors``, every error status
  a call ends with.
- ``fedtune_open_streams{kind}``, ``fedtune_long_polls``: the per-site call limits, at scrape time.
- ``fedtune_rounds{state}``, ``fedtune_site_*{site}``, ``fedtune_registry_up``: the registry, at scrape time.
- ``process_*``: prometheus-client's process collector (CPU seconds, RSS, open files).

Labels are bounded: methods and outcomes are ours, reasons are ``ErrorCode`` values, and ``site`` only
names registered, unrevoked sites (free text never becomes a label).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from coordinator.accept import UpdateRejected
from coordinator.site_limits import DOWNLOAD, PULL, UPLOAD
from fedtune.errors import INTERNAL_REASON, ErrorCode, FedtuneError
from fedtune.serde import SiteRecord

log = logging.getLogger("fedtune.coordinator.metrics")

ACCEPTED, REJECTED, INTERRUPTED = "accepted", "rejected", "interrupted"
STRATEGY_REASON = "strategy"
CANCELLED_REASON = "cancelled"
# A stream that ended these ways keeps its verified prefix: the worker resumes it.
RESUMABLE = frozenset({ErrorCode.IDLE_TIMEOUT, ErrorCode.INCOMPLETE_STREAM})
FOLD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COMMIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STREAM_KINDS = {UPLOAD: "upload", DOWNLOAD: "download"}


def upload_outcome(err: BaseException | None) -> tuple[str, str]:
    """(outcome, reason) of a PushUpdate call that ended with `err` (None: it returned)."""
    if err is None:
        return ACCEPTED, ""
    if isinstance(err, UpdateRejected):
        return REJECTED, STRATEGY_REASON
    if isinstance(err, FedtuneError):
        return (INTERRUPTED if err.code in RESUMABLE else REJECTED), err.code.value
    if isinstance(err, asyncio.CancelledError):
        return INTERRUPTED, CANCELLED_REASON
    return REJECTED, INTERNAL_REASON


class CoordinatorMetrics:
    """The instruments, in a registry of their own (never prometheus-client's global one)."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.updates = Counter(
            "fedtune_updates",
            "Pushed updates by outcome (accepted, rejected, interrupted) and reason (an error code or "
            "'strategy'; empty when accepted).",
            ["outcome", "reason"],
            registry=registry,
        )
        self.bytes_received = Counter(
            "fedtune_bytes_received",
            "Bytes of stream messages received, by method.",
            ["method"],
            registry=registry,
        )
        self.bytes_sent = Counter(
            "fedtune_bytes_sent", "Bytes of stream messages sent, by method.", ["method"], registry=registry
        )
        self.fold_seconds = Histogram(
            "fedtune_fold_seconds",
            "Time the round's strategy took to weigh and fold one new update.",
            buckets=FOLD_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "fedtune_commit_seconds",
            "Time a round's commit took (finish_round, storing the version, the SQL transaction).",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.rpc_errors = Counter(
            "fedtune_rpc_errors",
            "Calls that ended with an error status, by method, gRPC code and reason (the error code).",
            ["method", "code", "reason"],
            registry=registry,
        )
        self.open_streams = Gauge(
            "fedtune_open_streams",
            "Open PushUpdate (upload) and FetchTensors (download) streams.",
            ["kind"],
            registry=registry,
        )
        self.long_polls = Gauge(
            "fedtune_long_polls", "PullTask long-polls open (waiting).", registry=registry
        )
        for kind in STREAM_KINDS.values():
            self.open_streams.labels(kind=kind).set(0)

    # -- hooks ----------------------------------------------------------------------------------------
    def rpc_error(self, method: str, status: grpc.StatusCode, reason: str) -> None:
        """``aio_rpc_errors``' observer."""
        self.rpc_errors.labels(method=method, code=status.name, reason=reason).inc()

    @contextlib.contextmanager
    def counting_upload(self) -> Iterator[None]:
        """Count the outcome of the PushUpdate call run in the block."""
        try:
            yield
        except BaseException as err:
            self.updates.labels(*upload_outcome(err)).inc()
            raise
        self.updates.labels(*upload_outcome(None)).inc()

    def watch_calls(self, open_calls: Callable[[str], int]) -> None:
        """Read the open streams and long-polls at scrape time (``SiteCallLimits.open_calls``)."""
        for limit_kind, kind in STREAM_KINDS.items():
            self.open_streams.labels(kind=kind).set_function(_reader(open_calls, limit_kind))
        self.long_polls.set_function(_reader(open_calls, PULL))

    def watch_registry(
        self,
        rounds_by_state: Callable[[], dict[str, int]],
        sites: Callable[[], Iterable[SiteRecord]],
        now: Callable[[], float],
    ) -> None:
        """Read rounds and sites from the registry at scrape time."""
        self.registry.register(RegistryCollector(rounds_by_state, sites, now))


def _reader(open_calls: Callable[[str], int], kind: str) -> Callable[[], float]:
    return lambda: float(open_calls(kind))


class RegistryCollector(Collector):
    """Rounds by state and per-site liveness, read from the registry on each scrape (state that lives in
    SQL, so it is right after a restart and the same from every replica)."""

    def __init__(
        self,
        rounds_by_state: Callable[[], dict[str, int]],
        sites: Callable[[], Iterable[SiteRecord]],
        now: Callable[[], float],
    ) -> None:
        self._rounds_by_state = rounds_by_state
        self._sites = sites
        self._now = now

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rounds, sites, now = self._rounds_by_state(), list(self._sites()), self._now()
        except Exception:  # a scrape must answer even when the database does not
            log.warning("metrics: could not read the registry", exc_info=True)
            up = GaugeMetricFamily("fedtune_registry_up", _UP_HELP)
            up.add_metric([], 0.0)
            yield up
            return
        yield from self._families(rounds, sites, now)

    def _families(
        self, rounds: dict[str, int] | None = None, sites: list[SiteRecord] | None = None, now: float = 0.0
    ) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("fedtune_registry_up", _UP_HELP)
        up.add_metric([], 1.0)
        by_state = GaugeMetricFamily(
            "fedtune_rounds", "Rounds in each state (all experiments).", labels=["state"]
        )
        for state, count in sorted((rounds or {}).items()):
            by_state.add_metric([state], float(count))
        last_seen = GaugeMetricFamily(
            "fedtune_site_last_seen_timestamp_seconds",
            "When a worker of the site last called in (unix time); sites never seen are left out.",
            labels=["site"],
        )
        lag = GaugeMetricFamily(
            "fedtune_site_lag_seconds", "Seconds since a worker of the site last called in.", labels=["site"]
        )
        online = GaugeMetricFamily(
            "fedtune_site_workers_online", "Online workers of each registered site.", labels=["site"]
        )
        for site in sites or []:
            if site.revoked_unix:
                continue  # a revoked site is gone for good: no series for it
            online.add_metric([site.name], float(site.workers_online))
            if site.last_seen_unix > 0:
                last_seen.add_metric([site.name], site.last_seen_unix)
                lag.add_metric([site.name], max(0.0, now - site.last_seen_unix))
        yield from (up, by_state, last_seen, lag, online)


_UP_HELP = "1 when the last scrape could read the registry (rounds, sites), else 0."
