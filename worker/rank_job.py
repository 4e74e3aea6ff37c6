"""The files between the daemon and its training processes (worker/launcher.py, worker/rank_main.py).

One folder per task (`job_dir`): the daemon writes `job.json`; each rank writes `rank-N.started` when it
begins and, when it fails, `rank-N.error.json` (the error's type, and its code and message only for our
own errors, whose messages never quote site data: decision 24); the launch wrapper writes
`failures.json` (torchrun's exit code or signal per failed rank); rank 0 writes `progress.txt` as it
trains and, at the end, `update.safetensors` then `result.json` (its presence means the update is
complete).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedtune.errors import FedtuneError
from worker.task_io import TaskOutput

JOB_FILE, RESULT_FILE, UPDATE_FILE = "job.json", "result.json", "update.safetensors"
PROGRESS_FILE, FAILURES_FILE = "progress.txt", "failures.json"


class RankJob(BaseModel):
    """What every training process needs to run one train task (the daemon's `run_train` arguments)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec_json: str
    stage_index: int
    round: int
    global_path: Path
    data_root: Path
    model_root: Path
    site: str
    device: str  # the worker's setting: auto | cpu | cuda (each rank takes cuda:LOCAL_RANK)
    base_adapter_path: Path | None = None
    torch_threads: int | None = None
    max_lora_rank: int | None = None  # the worker's --max-lora-rank (docs/decisions.md 37)
    sites_in_round: int | None = None  # a secure-aggregation round's sites (site-level DP noise share)


class RankError(BaseModel):
    """Why a rank failed, safe to send: `message` only for our own errors."""

    rank: int
    type: str
    code: str | None = None
    message: str | None = None


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_job(job_dir: Path, job: RankJob) -> None:
    _write_atomic(job_dir / JOB_FILE, job.model_dump_json().encode())


def read_job(job_dir: Path) -> RankJob:
    return RankJob.model_validate_json((job_dir / JOB_FILE).read_bytes())


def mark_started(job_dir: Path, rank: int) -> None:
    (job_dir / f"rank-{rank}.started").write_text(str(os.getpid()))


def started_ranks(job_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in job_dir.glob("rank-*.started"))


def write_error(job_dir: Path, rank: int, err: BaseException) -> None:
    record = RankError(rank=rank, type=type(err).__name__)
    if isinstance(err, FedtuneError):
        record = RankError(rank=rank, type=record.type, code=err.code.value, message=err.message)
    _write_atomic(job_dir / f"rank-{rank}.error.json", record.model_dump_json().encode())


def read_errors(job_dir: Path) -> list[RankError]:
    found = [RankError.model_validate_json(p.read_bytes()) for p in job_dir.glob("rank-*.error.json")]
    return sorted(found, key=lambda e: e.rank)


def write_failures(job_dir: Path, failures: dict[int, str]) -> None:
    """torchrun's view: global rank -> how it ended ("exit code 1", "signal SIGKILL")."""
    _write_atomic(job_dir / FAILURES_FILE, json.dumps({str(k): v for k, v in failures.items()}).encode())


def read_failures(job_dir: Path) -> dict[int, str]:
    path = job_dir / FAILURES_FILE
    if not path.is_file():
        return {}
    return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}


def write_progress(job_dir: Path, text: str) -> None:
    _write_atomic(job_dir / PROGRESS_FILE, text.encode())


def read_progress(job_dir: Path) -> str:
    path = job_dir / PROGRESS_FILE
    return path.read_text() if path.is_file() else ""


def write_output(job_dir: Path, output: TaskOutput) -> None:
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in output.arrays.items()}
    save_file(arrays, str(job_dir / UPDATE_FILE))
    result = {"num_examples": output.num_examples, "metrics": output.metrics}
    _write_atomic(job_dir / RESULT_FILE, json.dumps(result).encode())


def read_output(job_dir: Path) -> TaskOutput | None:
    """Rank 0's update, or None when it did not finish writing one."""
    if not (job_dir / RESULT_FILE).is_file():
        return None
    from safetensors.numpy import load_file

    result = json.loads((job_dir / RESULT_FILE).read_text())
    arrays = load_file(str(job_dir / UPDATE_FILE))
    metrics = {str(k): float(v) for k, v in result["metrics"].items()}
    return TaskOutput(arrays=arrays, num_examples=int(result["num_examples"]), metrics=metrics)


__all__ = [
    "RankError",
    "RankJob",
    "mark_started",
    "read_errors",
    "read_failures",
    "read_job",
    "read_output",
    "read_progress",
    "started_ranks",
    "write_error",
    "write_failures",
    "write_job",
    "write_output",
    "write_progress",
]
