"""The daemon's side of a multi-process train task: start torchrun, watch it, collect rank 0's update.

The daemon keeps the one gRPC connection; the training processes only train. `train_on_ranks` writes
the task into a fresh job folder (worker/rank_job.py), starts `python -m worker.torchrun` (its own
process group, and told to end with the daemon), then polls every `poll_seconds`: rank 0's progress
goes to the daemon's `progress` (the task's heartbeat text), and a SIGTERM or a cancelled task
(worker/interrupt.py) stops torchrun at once. Stopping is SIGTERM to torchrun's process group (its
agent then SIGTERMs the ranks, which die on it), SIGKILL after `stop_grace_seconds`; a rank outlives
neither, since each asked to be signalled when torchrun dies (fedtune/lifetime.py).

A failed run raises `FedtuneError` naming the rank and why: its own error when it reported one, else how
torchrun saw it end (a signal: killed, out of memory?).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.lifetime import child_env
from worker import interrupt, rank_job
from worker.rank_job import RankJob
from worker.task_io import TaskOutput

log = logging.getLogger("fedtune.worker")

POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0


def check_processes(processes: int, device: str) -> None:
    """Refuse a process count the machine cannot give one GPU each (CPU processes: any count)."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return
    available = torch.cuda.device_count()
    if processes > available:
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"processes={processes} but this machine has {available} CUDA device(s); "
            "start the worker with --processes at most the GPU count",
        )


def train_on_ranks(
    job: RankJob,
    processes: int,
    work_dir: Path,
    progress: Callable[[str], None],
    *,
    poll_seconds: float = POLL_SECONDS,
    stop_grace_seconds: float = STOP_GRACE_SECONDS,
) -> TaskOutput:
    """Run one train task on `processes` torchrun ranks; rank 0's update, or `FedtuneError`."""
    check_processes(processes, job.device)
    work_dir.mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix="ranks-", dir=work_dir))
    try:
        rank_job.write_job(job_dir, job)
        command = [sys.executable, "-m", "worker.torchrun", str(job_dir), str(processes)]
        log.info("training on %d processes (torchrun, job %s)", processes, job_dir.name)
        proc = subprocess.Popen(command, env=_env(), start_new_session=True)
        try:
            _watch(proc, job_dir, progress, poll_seconds)
        finally:
            _stop(proc, stop_grace_seconds)
        return _collect(job_dir, proc.returncode, processes)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _env() -> dict[str, str]:
    """The daemon's environment, this source tree importable, and told to end with the daemon."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH", "")]))
    return child_env({**os.environ, "PYTHONPATH": path})


def _watch(
    proc: subprocess.Popen[bytes], job_dir: Path, progress: Callable[[str], None], poll_seconds: float
) -> None:
    shown = ""
    while proc.poll() is None:
        interrupt.check()  # SIGTERM to the daemon or a cancelled task: TaskAbandoned
        text = rank_job.read_progress(job_dir)
        if text and text != shown:
            shown = text
            progress(text)
        time.sleep(poll_seconds)


def _stop(proc: subprocess.Popen[bytes], grace_seconds: float) -> None:
    if proc.poll() is not None:
        return
    log.info("stopping the training processes")
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        log.warning("training processes still running after %.0fs: killing them", grace_seconds)
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _collect(job_dir: Path, returncode: int | None, processes: int) -> TaskOutput:
    output = rank_job.read_output(job_dir)
    if returncode == 0 and output is not None:
        return output
    errors = rank_job.read_errors(job_dir)
    ours = next((e for e in errors if e.code is not None and e.message is not None), None)
    if ours is not None and ours.code is not None:
        raise FedtuneError(
            ErrorCode(ours.code), f"training process {ours.rank} of {processes}: {ours.message}"
        )
    # A rank that ended without a report (a signal, the out-of-memory killer) is the cause; the
    # others' errors (a peer's connection reset in a collective) follow from it.
    unreported = {
        r: how for r, how in rank_job.read_failures(job_dir).items() if r not in {e.rank for e in errors}
    }
    if unreported:
        listed = ", ".join(f"process {rank} ended with {how}" for rank, how in sorted(unreported.items()))
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"training failed: {listed} without reporting an error (killed, or out of memory?); "
            "see this site's worker log",
        )
    if errors:
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"training process {errors[0].rank} of {processes} failed with {errors[0].type} (its message "
            "may quote site data: see this site's worker log)",
        )
    started = rank_job.started_ranks(job_dir)
    raise FedtuneError(
        ErrorCode.UNAVAILABLE,
        f"the training processes exited with code {returncode} ({len(started)} of {processes} had "
        "started) and wrote no update; see this site's worker log",
    )


__all__ = ["check_processes", "train_on_ranks"]
