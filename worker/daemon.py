"""The worker daemon: register, heartbeat, long-poll for tasks, run them one at a time.

Only tensors and metrics ever leave the site: the training entry points (worker.tasks) read the
local data; this loop ships what they return. The coordinator being away is normal: every call
retries with backoff, and a coordinator that forgot this worker (restart, NOT_FOUND /
UNAUTHENTICATED on heartbeat or pull) gets a fresh Register. SIGTERM stops the loop, abandons the
task in progress (reported as failed so it can be reassigned) and exits 0.

Tasks arrive decoded (`fedtune.serde.TaskRecord`, worker/connection.py) and run on models from the
daemon's one `ModelFactory` (worker/model_factory.py), which keeps them from one round to the next.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.metrics_http import MetricsEndpoint, serve_metrics
from fedtune.sanitize import ERROR_TEXT_LIMIT, public_text
from fedtune.secagg.wire import SECAGG_TASK_KINDS
from fedtune.serde import TaskRecord
from fedtune.spec import ExperimentSpec, load_spec_json
from fedtune.tensorstream.manifest import Manifest
from worker import memory
from worker.connection import Connection, UnreadableTask
from worker.interrupt import TaskAbandoned, interruptible
from worker.metrics import WorkerMetrics
from worker.retry import RpcFailure, Stopped
from worker.secagg import SiteSecAgg
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.model_factory import ModelFactory
    from worker.task_io import TaskOutput

log = logging.getLogger("fedtune.worker")

FORGOTTEN = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED})
FATAL_REGISTER = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
)
TASK_CLOSED = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
# What a site sends for a train task: its trained tensors. The Task's update_kind field is deprecated
# (worker.proto); "" is what a coordinator that never set it sends.
SENT_UPDATE_KINDS = frozenset({"weights", ""})


def failure_report(err: BaseException) -> str:
    """What the coordinator is told about a failed task: never a value from the site's data.

    Our own errors are written not to quote data (worker/data.py names file, line and field), and an
    RPC refusal is the coordinator's own words, so their messages are sent. Anything else (a KeyError
    of a label, a ValueError quoting a record from a library) is sent as its type name only; the full
    message and traceback are in this site's worker log (docs/decisions.md 24).
    """
    if isinstance(err, RpcFailure):
        text = f"{err.method} rejected: {err.details}"
    elif isinstance(err, FedtuneError):
        text = str(err)
    else:
        text = f"{type(err).__name__} (its message may quote site data: see this site's worker log)"
    return public_text(text, ERROR_TEXT_LIMIT)


def worker_version() -> str:
    try:
        return metadata.version("fedtune")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class RunningTask:
    task_id: str
    kind: str
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: str = "starting"


class _PercentLogger:
    """Logs 'what: N%' each time another 10% is done."""

    def __init__(self, what: str, state: RunningTask) -> None:
        self.what, self.state, self.last = what, state, -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 if total <= 0 else int(done * 100 / total)
        self.state.progress = f"{self.what} {percent}%"
        if percent // 10 > self.last // 10 or percent == 100 and self.last != 100:
            self.last = percent
            log.info("%s: %d%% (%d/%d bytes)", self.what, percent, done, total)


class WorkerDaemon:
    """One site's worker. `run(stop_event)` returns the process exit code."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.connection: Connection | None = None
        self.current: RunningTask | None = None
        self._register_lock = threading.Lock()
        self._capabilities: tuple[dict[str, Any], dict[str, int]] | None = None
        self._models: ModelFactory | None = None
        self.metrics = WorkerMetrics(settings.site, worker_version())
        self.metrics_endpoint: MetricsEndpoint | None = None  # while running, when metrics_port is set
        self.secagg = SiteSecAgg(settings.resolved_work_dir / "secagg")

    @property
    def models(self) -> ModelFactory:
        """The models this worker's tasks run on, kept between tasks (made at the first task: building
        it imports torch, which `fedtune worker --help` and registration do not need)."""
        if self._models is None:
            from worker.model_factory import ModelFactory

            self._models = ModelFactory()
        return self._models

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> int:
        if stop_event is not None:
            self.stop_event = stop_event
        self._prepare()
        self.connection = Connection(self.settings, self.stop_event, on_rpc_error=self.metrics.rpc_error)
        heartbeats = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        try:
            self._serve_metrics()
            self._register()
            heartbeats.start()
            self._pull_loop()
        except Stopped:
            pass
        except RpcFailure as err:
            log.error("giving up: %s", err)
            return 2
        finally:
            self.stop_event.set()
            if heartbeats.is_alive():
                heartbeats.join(timeout=5)
            self.connection.close()
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.close()
        log.info("worker stopped")
        return 0

    def _prepare(self) -> None:
        self.settings.downloads_dir.mkdir(parents=True, exist_ok=True)
        self.settings.personalized_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        memory.return_freed_memory()

    def _serve_metrics(self) -> None:
        s = self.settings
        if s.metrics_port is not None:
            self.metrics_endpoint = serve_metrics(
                self.metrics.registry, s.metrics_host, s.metrics_port, setting="--metrics-port"
            )

    def capabilities(self) -> tuple[dict[str, Any], dict[str, int]]:
        if self._capabilities is None:
            from worker.device import select_device
            from worker.tasks import dataset_sizes

            device = dict(select_device(self.settings.device).info)
            self._capabilities = (device, dict(dataset_sizes(self.settings.data_root)))
        return self._capabilities

    def _register(self, stale_worker_id: str | None = None) -> None:
        """Register; with `stale_worker_id`, only if no other thread has replaced that id meanwhile."""
        assert self.connection is not None
        device, sizes = self.capabilities()
        with self._register_lock:
            if stale_worker_id is not None and self.connection.worker_id != stale_worker_id:
                return
            try:
                worker_id = self.connection.register(device, sizes, worker_version())
            except RpcFailure as err:
                if err.code in FATAL_REGISTER:
                    log.error("the coordinator refused site %r: %s", self.settings.site, err.details)
                raise
        log.info(
            "registered as %s (site %s, device %s, datasets %s, heartbeat %.1fs)",
            worker_id,
            self.settings.site,
            device.get("kind"),
            sizes,
            self.connection.heartbeat_seconds,
        )

    # -- loops ---------------------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        assert self.connection is not None
        while not self.stop_event.wait(self.connection.heartbeat_seconds):
            current = self.current
            sent_as = self.connection.worker_id
            try:
                cancel_task = self.connection.heartbeat(
                    current.task_id if current else "", current.progress if current else "idle"
                )
            except RpcFailure as err:
                if err.code in FORGOTTEN:
                    log.warning("the coordinator forgot this worker (%s); registering again", err.code.name)
                    self._try_register(sent_as)
                else:
                    log.debug("heartbeat failed: %s", err)
                continue
            except Stopped:
                return
            if cancel_task and current is not None and not current.cancel.is_set():
                log.warning("the coordinator cancelled task %s; abandoning it", current.task_id)
                current.cancel.set()

    def _try_register(self, stale_worker_id: str) -> None:
        try:
            self._register(stale_worker_id)
        except (RpcFailure, Stopped) as err:
            log.warning("register failed: %s", err)

    def _pull_loop(self) -> None:
        assert self.connection is not None
        while not self.stop_event.is_set():
            sent_as = self.connection.worker_id
            try:
                task = self.connection.pull_task(self.settings.pull_wait_seconds)
            except RpcFailure as err:
                if err.code not in FORGOTTEN:
                    raise
                log.warning("PullTask: %s; registering again", err.code.name)
                self._register(sent_as)
                continue
            except UnreadableTask as err:
                log.error("task %s cannot be read: %s", err.task_id, err.error)
                self._report_failure(err.task_id, failure_report(err.error))
                continue
            if task is not None:
                self.run_task(task)

    # -- tasks ---------------------------------------------------------------------------------------

    def run_task(self, task: TaskRecord) -> None:
        assert self.connection is not None
        kind = task.kind
        state = RunningTask(task.task_id, kind)
        self.current = state
        log.info(
            "task %s received: %s, experiment %s, stage %s (#%d), round %d, from version %s",
            task.task_id,
            kind,
            task.experiment_id,
            task.stage,
            task.stage_index,
            task.round,
            task.model_version_id or "-",
        )
        started = time.monotonic()
        try:
            with (
                self.metrics.running_task(kind),
                interruptible(lambda: state.cancel.is_set() or self.stop_event.is_set()),
            ):
                self._execute(task, state)
            log.info("task %s done in %.1fs", task.task_id, time.monotonic() - started)
        except (TaskAbandoned, Stopped):
            if state.cancel.is_set():
                log.warning("task %s abandoned: cancelled by the coordinator", task.task_id)
            else:
                # Not reported as failed: the coordinator puts the task back in the queue when its
                # lease expires or when this site's worker registers again.
                log.warning(
                    "task %s abandoned: worker stopping; the coordinator will reassign it", task.task_id
                )
        except RpcFailure as err:
            log.error("task %s failed: %s", task.task_id, err)
            if err.code not in TASK_CLOSED:
                self._report_failure(task.task_id, failure_report(err))
        except FedtuneError as err:
            log.error("task %s failed: %s", task.task_id, err)
            self._report_failure(task.task_id, failure_report(err))
        except Exception as err:  # training code failing must not kill the daemon
            log.exception("task %s failed", task.task_id)  # the whole story stays in the site's log
            self._report_failure(task.task_id, failure_report(err))
        finally:
            self.current = None
            memory.trim()

    def _report_failure(self, task_id: str, error: str) -> None:
        assert self.connection is not None
        try:
            self.connection.report_result(task_id, False, error=error)
        except (RpcFailure, Stopped) as err:
            log.warning("could not report the failure of task %s: %s", task_id, err)

    def _progress(self, state: RunningTask) -> Any:
        def progress(*args: Any, **kwargs: Any) -> None:
            message = " ".join(str(a) for a in args) + "".join(f" {k}={v}" for k, v in kwargs.items())
            state.progress = message.strip()[:500]
            log.info("task %s: %s", state.task_id, state.progress)
            if state.cancel.is_set() or self.stop_event.is_set():
                raise TaskAbandoned(state.task_id)

        return progress

    def _check(self, state: RunningTask) -> None:
        if state.cancel.is_set() or self.stop_event.is_set():
            raise TaskAbandoned(state.task_id)

    def _fetch(self, task: TaskRecord, state: RunningTask) -> Path:
        assert self.connection is not None
        return self.connection.fetch_version(
            task.model_version_id,
            task.model_manifest or Manifest(tensors=()),  # none named: the coordinator's is fetched
            self.settings.downloads_dir,
            cancel=state.cancel,
            progress=self.metrics.counting(
                self.metrics.bytes_received, _PercentLogger(f"download {task.model_version_id}", state)
            ),
        )

    def _fetch_base(self, task: TaskRecord, state: RunningTask) -> Path | None:
        """The global-stage version the task's stage builds on (merged into the base), if any."""
        if not task.base_version_id:
            return None
        assert self.connection is not None
        return self.connection.fetch_version(
            task.base_version_id,
            Manifest(tensors=()),  # no digest: the coordinator's manifest is fetched first
            self.settings.downloads_dir,
            cancel=state.cancel,
            progress=self.metrics.counting(
                self.metrics.bytes_received, _PercentLogger(f"download base {task.base_version_id}", state)
            ),
        )

    def _push(self, task: TaskRecord, state: RunningTask, output: TaskOutput) -> None:
        assert self.connection is not None
        self._check(state)
        self.metrics.task_output(output.metrics)
        answer = self.connection.push_update(
            task.task_id,
            output,
            cancel=state.cancel,
            progress=self.metrics.counting(
                self.metrics.bytes_sent, _PercentLogger(f"upload {task.task_id}", state)
            ),
        )
        self._check(state)
        log.info(
            "update for task %s accepted (%s, %d bytes, %d examples)",
            task.task_id,
            answer.update_id or "already held",
            answer.received_bytes,
            output.num_examples,
        )

    def _execute(self, task: TaskRecord, state: RunningTask) -> None:
        from worker import tasks

        assert self.connection is not None
        if task.update_kind not in SENT_UPDATE_KINDS:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"task asks for update_kind {task.update_kind!r}; worker {worker_version()} sends its "
                "trained weights only ('weights')",
            )
        spec: ExperimentSpec = load_spec_json(task.spec_json)
        s = self.settings
        if task.kind in SECAGG_TASK_KINDS:
            self._secagg_step(task, spec, state)
            return
        base_path = self._fetch_base(task, state)
        if task.kind == "init":
            state.progress = "building initial tensors"
            output = tasks.run_init(
                spec,
                s.model_root,
                models=self.models,
                device=s.device,
                stage_index=task.stage_index,
                base_adapter_path=base_path,
            )
            self._push(task, state, output)
        elif task.kind == "train" and s.processes > 1 and tasks.trains_on_ranks(spec, task.stage_index):
            global_path = self._fetch(task, state)
            self._check(state)
            output = self._train_on_ranks(task, state, base_path, global_path)
            output = self._as_sent(task, spec, global_path, output)
            self._push(task, state, output)
        elif task.kind == "train":
            global_path = self._fetch(task, state)
            self._check(state)
            output = tasks.run_train(
                spec,
                task.stage_index,
                task.round,
                global_path,
                s.data_root,
                s.model_root,
                models=self.models,
                site=s.site,
                progress=self._progress(state),
                device=s.device,
                base_adapter_path=base_path,
                max_lora_rank=s.max_lora_rank,
                sites_in_round=task.secagg.num_sites if task.secagg is not None else None,
            )
            output = self._as_sent(task, spec, global_path, output)
            self._push(task, state, output)
        elif task.kind == "personalize":
            global_path = self._fetch(task, state)
            self._check(state)
            out_dir = s.personalized_dir / task.experiment_id
            output = tasks.run_personalize(
                spec,
                task.stage_index,
                global_path,
                s.data_root,
                s.model_root,
                out_dir=out_dir,
                models=self.models,
                site=s.site,
                progress=self._progress(state),
                device=s.device,
                base_adapter_path=base_path,
                max_lora_rank=s.max_lora_rank,
            )
            log.info("personalized model kept at %s", out_dir)
            self._finish_with_metrics(task, state, output)
        else:  # "evaluate" (reserved in worker.proto, never issued) or a kind newer than this worker
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"task kind {task.kind} is not known to worker {worker_version()}"
            )

    def _train_on_ranks(
        self, task: TaskRecord, state: RunningTask, base_path: Path | None, global_path: Path
    ) -> TaskOutput:
        """A train task on `settings.processes` torchrun processes (worker/launcher.py); this process
        keeps the coordinator connection and uploads rank 0's update."""
        from worker.launcher import train_on_ranks
        from worker.rank_job import RankJob

        s = self.settings
        job = RankJob(
            spec_json=task.spec_json,
            stage_index=task.stage_index,
            round=task.round,
            global_path=global_path,
            data_root=s.data_root,
            model_root=s.model_root,
            site=s.site,
            device=s.device,
            base_adapter_path=base_path,
            torch_threads=s.torch_threads,
            max_lora_rank=s.max_lora_rank,
            sites_in_round=task.secagg.num_sites if task.secagg is not None else None,
        )
        return train_on_ranks(job, s.processes, s.resolved_work_dir / "ranks", self._progress(state))

    def _as_sent(
        self, task: TaskRecord, spec: ExperimentSpec, global_path: Path, output: TaskOutput
    ) -> TaskOutput:
        """A train task's update as it leaves the site: masked in a secure-aggregation round (the only
        form it may take there), else encoded as the spec's transport asks."""
        if task.secagg is not None:
            return self.secagg.masked_output(task, spec, output)
        return self._compress(task, spec, global_path, output)

    def _compress(
        self, task: TaskRecord, spec: ExperimentSpec, global_path: Path, output: TaskOutput
    ) -> TaskOutput:
        """The output as the spec's transport sends it (deltas, encoded; error feedback kept on disk)."""
        if spec.transport.is_plain:
            return output
        from worker.compression import compress_train_output
        from worker.error_feedback import ResidualStore
        from worker.task_io import read_global

        residuals = ResidualStore(self.settings.resolved_work_dir / "residuals")
        return compress_train_output(
            output, spec, task.stage_index, read_global(global_path), residuals, task.experiment_id
        )

    def _secagg_step(self, task: TaskRecord, spec: ExperimentSpec, state: RunningTask) -> None:
        """Advertise keys, deal shares or reveal shares (worker/secagg.py) and send the answer."""
        assert self.connection is not None
        state.progress = f"secure aggregation: {task.kind.removeprefix('secagg_')}"
        request = self.secagg.answer(task, spec)
        self._check(state)
        self.connection.submit_secagg(request)
        if task.kind == "secagg_unmask":
            self.secagg.forget(task)
        log.info("task %s: secure aggregation %s answered", task.task_id, task.kind)

    def _finish_with_metrics(self, task: TaskRecord, state: RunningTask, output: TaskOutput) -> None:
        assert self.connection is not None
        self._check(state)
        self.metrics.task_output(output.metrics)
        self.connection.report_result(
            task.task_id, True, metrics=output.metrics, num_examples=output.num_examples
        )
        log.info("task %s metrics: %s", task.task_id, {k: round(v, 4) for k, v in output.metrics.items()})
