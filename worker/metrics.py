"""A worker's Prometheus metrics (docs/decisions.md 32), served with ``--metrics-port`` (off by default).

- ``fedtune_worker_tasks_total{kind,outcome}``: tasks ended ``done``, ``failed`` or ``abandoned`` (cancelled
  by the coordinator or the worker stopping); ``fedtune_worker_task_seconds{kind}`` (histogram) and
  ``fedtune_worker_last_task_seconds{kind}``; ``fedtune_worker_busy`` is 1 while a task runs.
- ``fedtune_worker_train_steps_total`` / ``fedtune_worker_train_seconds_total`` (their rates' ratio is the
  step time over any window) and ``fedtune_worker_train_step_seconds``, the last training task's mean
  step time; from the task's own ``train_steps`` / ``train_seconds`` (absent when DP hides them).
- ``fedtune_worker_bytes_sent_total`` / ``fedtune_worker_bytes_received_total``: update and model bytes as
  the transfers report progress (a transfer resumed from an earlier process counts its prefix once more).
- ``fedtune_worker_rpc_errors_total{method,code}``: each failed attempt of a unary call, retried or not.
- ``fedtune_worker_peak_rss_bytes`` (the process's high-water mark) and prometheus-client's ``process_*``.

Labels are bounded: task kinds are the protocol's (``other`` for anything else), codes are gRPC's.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from worker.interrupt import TaskAbandoned
from worker.retry import Stopped

TASK_KINDS = frozenset({"init", "train", "personalize"})
DONE, FAILED, ABANDONED = "done", "failed", "abandoned"
TASK_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
Progress = Callable[[int, int], None]


def peak_rss_bytes() -> float:
    """The process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)


def task_outcome(err: BaseException | None) -> str:
    if err is None:
        return DONE
    return ABANDONED if isinstance(err, TaskAbandoned | Stopped) else FAILED


class WorkerMetrics:
    """The worker's instruments, in a registry of their own (never prometheus-client's global one)."""

    def __init__(self, site: str, version: str) -> None:
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        info = Gauge(
            "fedtune_worker_info",
            "This worker: its site and version.",
            ["site", "version"],
            registry=registry,
        )
        info.labels(site=site, version=version).set(1)
        self.tasks = Counter(
            "fedtune_worker_tasks",
            "Tasks by kind and outcome (done, failed, abandoned).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.task_seconds = Histogram(
            "fedtune_worker_task_seconds",
            "How long tasks ran, by kind.",
            ["kind"],
            buckets=TASK_BUCKETS,
            registry=registry,
        )
        self.last_task_seconds = Gauge(
            "fedtune_worker_last_task_seconds",
            "How long the last task of each kind ran.",
            ["kind"],
            registry=registry,
        )
        self.busy = Gauge("fedtune_worker_busy", "1 while a task runs.", registry=registry)
        self.train_steps = Counter("fedtune_worker_train_steps", "Training steps run.", registry=registry)
        self.train_seconds = Counter(
            "fedtune_worker_train_seconds", "Seconds spent in training steps.", registry=registry
        )
        self.step_seconds = Gauge(
            "fedtune_worker_train_step_seconds",
            "Mean step time of the last training task.",
            registry=registry,
        )
        self.bytes_sent = Counter("fedtune_worker_bytes_sent", "Update bytes uploaded.", registry=registry)
        self.bytes_received = Counter(
            "fedtune_worker_bytes_received", "Model bytes downloaded.", registry=registry
        )
        self.rpc_errors = Counter(
            "fedtune_worker_rpc_errors",
            "Failed attempts of unary calls, by method and gRPC code.",
            ["method", "code"],
            registry=registry,
        )
        Gauge(
            "fedtune_worker_peak_rss_bytes", "Peak resident memory of the worker process.", registry=registry
        ).set_function(peak_rss_bytes)

    @contextlib.contextmanager
    def running_task(self, kind: str) -> Iterator[None]:
        """Time the task run in the block and count how it ended."""
        kind = kind if kind in TASK_KINDS else "other"
        started = time.monotonic()
        self.busy.set(1)
        outcome = DONE
        try:
            yield
        except BaseException as err:
            outcome = task_outcome(err)
            raise
        finally:
            seconds = time.monotonic() - started
            self.busy.set(0)
            self.tasks.labels(kind=kind, outcome=outcome).inc()
            self.task_seconds.labels(kind=kind).observe(seconds)
            self.last_task_seconds.labels(kind=kind).set(seconds)

    def task_output(self, metrics: Mapping[str, float]) -> None:
        """Training figures from a task's reported metrics (``train_steps``, ``train_seconds``)."""
        steps, seconds = metrics.get("train_steps"), metrics.get("train_seconds")
        if not steps or seconds is None or steps <= 0 or seconds < 0:
            return
        self.train_steps.inc(steps)
        self.train_seconds.inc(seconds)
        self.step_seconds.set(seconds / steps)

    def rpc_error(self, method: str, code: grpc.StatusCode) -> None:
        self.rpc_errors.labels(method=method, code=code.name).inc()

    def counting(self, counter: Counter, progress: Progress | None) -> Progress:
        """A transfer's progress callback that also adds each step's new bytes to `counter`."""
        last = 0

        def report(done: int, total: int) -> None:
            nonlocal last
            if done > last:
                counter.inc(done - last)
            last = done  # a restart from 0 reports less: count from there
            if progress is not None:
                progress(done, total)

        return report
