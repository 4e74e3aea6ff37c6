"""Wait for a coordinator, then follow an experiment's rounds until it ends (demo and benchmarks)."""

from __future__ import annotations

import time

from rich.console import Console

from admin.client import AdminClient, AdminError
from demo.processes import ProcessGroup

SHOWN_METRICS = ("train_loss", "eval_accuracy", "eval_loss")
FINAL_STATES = ("completed", "failed", "aborted")


def wait_for_coordinator(admin: AdminClient, group: ProcessGroup, timeout: float = 60) -> None:
    """Poll GetStatus until the coordinator answers; fail fast if a child process died."""
    deadline = time.monotonic() + timeout
    while True:
        group.check_alive()
        try:
            admin.get_status()
            return
        except AdminError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def follow_experiment(
    admin: AdminClient,
    group: ProcessGroup,
    experiment_id: str,
    timeout: float,
    console: Console | None = None,
) -> str:
    """Print a line whenever a round changes state or gets an update; return the final state."""
    console = console or Console()
    deadline = time.monotonic() + timeout
    seen: dict[tuple[int, int], tuple[str, int]] = {}
    start = time.monotonic()
    while time.monotonic() < deadline:
        group.check_alive()
        for info in admin.list_rounds(experiment_id):
            key = (info.state, info.updates_received)
            if seen.get((info.stage_index, info.round)) != key:
                seen[(info.stage_index, info.round)] = key
                metrics = " ".join(f"{k}={info.metrics[k]:.4f}" for k in SHOWN_METRICS if k in info.metrics)
                console.print(
                    f"[{time.monotonic() - start:6.0f}s] {info.stage} round {info.round}: {info.state:<11} "
                    f"{info.updates_received}/{info.tasks_total} sites done  {metrics}",
                    soft_wrap=True,
                )
        experiment = admin.get_experiment(experiment_id)
        if experiment.state in FINAL_STATES:
            return str(experiment.state)
        time.sleep(2)
    raise TimeoutError(f"experiment {experiment_id} did not finish in {timeout:.0f} s")
