"""One federated round for the GPU check (bench/gpu_check.py): the real coordinator and two workers.

`fedtune coordinator serve` and two `fedtune worker run --device cuda` (or cpu for the smoke) on
127.0.0.1, both training on the same GPU; the sites' data are the check's text with other seeds. Every
process ends with this one (demo.processes.ProcessGroup); logs stay in the check's scratch folder and
their tails are returned when the round does not complete.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from admin.client import AdminClient
from demo.processes import ProcessGroup, free_port
from demo.progress import follow_experiment, wait_for_coordinator

if TYPE_CHECKING:
    from bench.gpu_check import Profile

SITES = ("gpu-site-a", "gpu-site-b")
ROUND_TIMEOUT_SECONDS = 300.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}


def _tails(log_dir: Path, lines: int = 15) -> str:
    return "\n".join(
        f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted(log_dir.glob("*.log"))
    )


def federated_round(profile: Profile, work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one round of `spec` on two sites; its state, duration and the round's metrics."""
    from bench.gpu_check import write_text_data

    port = free_port()
    target = f"127.0.0.1:{port}"
    started = time.monotonic()
    logs = work / "round-logs"
    try:
        with ProcessGroup(logs) as group, AdminClient(target, timeout=30) as admin:
            group.start(
                "coordinator",
                ["coordinator", "serve", "--port", str(port), "--data-dir", str(work / "coordinator")],
                env=_env(),
            )
            wait_for_coordinator(admin, group)
            for seed, site in enumerate(SITES, start=1):
                data_root = work / "sites" / site
                write_text_data(data_root, examples=32, words=profile.seq_len + 8, seed=seed)
                token = admin.add_site(site).token
                args = ["worker", "run", "--coordinator", target, "--site", site, "--token", token]
                args += ["--data-root", str(data_root), "--model-root", str(work / "models")]
                group.start(f"worker-{site}", [*args, "--device", profile.device], env=_env())
            experiment = admin.submit_experiment(yaml.safe_dump(spec, sort_keys=False), start=True)
            state = follow_experiment(admin, group, experiment.experiment_id, ROUND_TIMEOUT_SECONDS)
            (info,) = admin.list_rounds(experiment.experiment_id)
            result: dict[str, Any] = {
                "state": state,
                "round_state": info.state,
                "updates_received": info.updates_received,
                "metrics": {k: round(v, 4) for k, v in info.metrics.items()},
            }
    except Exception as err:  # the check reports a failed round, with the processes' log tails
        result = {"state": "error", "error": f"{type(err).__name__}: {err}"[:500], "logs": _tails(logs)}
    result["seconds"] = round(time.monotonic() - started, 1)
    if result.get("state") not in ("completed", "error"):
        result["logs"] = _tails(logs)
    return result
