"""What the synthetic-site benchmarks (capacity, load, big_updates, secagg_round) share: the coordinator's
config file, a sample of the coordinator process from /proc, and the one-stage spec their scripted sites
run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml


def write_coordinator_config(
    work: Path, port: int, sites: dict[str, str], admin_token: str, **settings: Any
) -> Path:
    """`work`/coordinator.yaml for a loopback coordinator with `sites` (name -> token) registered, its data
    in `work`/data, warnings-only logs, and `settings` on top; returns its path."""
    config = work / "coordinator.yaml"
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(work / "data"),
        "admin_token": admin_token,
        "sites": ",".join(f"{s}:{t}" for s, t in sites.items()),
        "log_level": "WARNING",
    }
    config.write_text(yaml.safe_dump({**base, **settings}))
    return config


def proc_sample(pid: int) -> dict[str, float]:
    """Wall time, threads, open fds, resident and peak-resident MiB and CPU seconds of process `pid`."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "t": time.time(),
        "threads": float(status["Threads"].strip()),
        "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
        "rss_mib": float(status["VmRSS"].split()[0]) / 1024,
        "hwm_mib": float(status["VmHWM"].split()[0]) / 1024,
        "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
    }


def synthetic_spec_yaml(
    name: str,
    sites: list[str],
    rounds: int,
    deadline_seconds: float,
    *,
    min_sites: int | None = None,
    privacy: dict[str, Any] | None = None,
) -> str:
    """A FedAvg finetune stage over `sites` (all selected) of a synthetic model the sites script."""
    spec: dict[str, Any] = {
        "name": name,
        "base_model": {"name": "synthetic"},
        "task": "causal-lm",
        "stages": [
            {
                "kind": "finetune",
                "rounds": rounds,
                "deadline_seconds": deadline_seconds,
                "selection": {
                    "mode": "all",
                    "min_sites": len(sites) if min_sites is None else min_sites,
                    "sites": sites,
                },
                "strategy": {"name": "fedavg"},
            }
        ],
    }
    if privacy:
        spec["privacy"] = privacy
    return str(yaml.safe_dump(spec))
