"""The quality benchmark: federated configurations vs centralized vs local-only, on one split."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.config import BenchConfig, experiment_spec
from bench.dataset import BenchData, prepare_data


def machine_info() -> dict[str, Any]:
    import torch

    versions: dict[str, str | None] = {}
    for package in ("fedtune", "torch", "transformers", "peft", "grpcio"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def _link_model(model_dir: Path, model_root: Path, name: str) -> None:
    model_root.mkdir(parents=True, exist_ok=True)
    link = model_root / name
    if not link.exists():
        link.symlink_to(Path(model_dir).resolve(), target_is_directory=True)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _federated(
    config: BenchConfig, data: BenchData, work: Path, model_root: Path
) -> dict[str, dict[str, Any]]:
    from bench.federated import local_cluster, run_federated

    out: dict[str, dict[str, Any]] = {m: {} for m in config.methods}
    if not config.federated:
        return out
    with local_cluster(work, data, model_root) as cluster:
        for method in config.methods:
            for run in config.federated:
                _log(f"federated {method} / {run.label}")
                spec = experiment_spec(config, data.labels, method, run)
                exports = work / "exports" / method / run.label.replace(":", "_")
                out[method][run.label] = run_federated(cluster, spec, data, exports, config.timeout_seconds)
    return out


def _baselines(config: BenchConfig, data: BenchData, model_root: Path, method: str) -> dict[str, Any]:
    from bench import baselines

    spec = experiment_spec(config, data.labels, method)
    out: dict[str, Any] = {}
    for name in config.baseline_names():
        _log(f"baseline {method} / {name}")
        started = time.monotonic()
        fn = baselines.centralized if name == "centralized" else baselines.local_only
        out[name] = {**fn(config, data, spec, model_root), "seconds": time.monotonic() - started}
    return out


def run_quality(config: BenchConfig, work: Path) -> dict[str, Any]:
    """Run every configuration for every method; return all figures (see `report.write_outputs`)."""
    from transformers.utils import logging as hf_logging

    from bench.baselines import parameter_counts

    hf_logging.set_verbosity_error()  # one load report per exported version would drown the progress
    hf_logging.disable_progress_bar()
    started = time.monotonic()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model_root = work / "models"
    _link_model(config.model_dir, model_root, config.model_name)
    data = prepare_data(
        config.corpus_dir, work / "data", config.sites, config.alpha, config.seed, config.max_test_examples
    )
    _log(f"{len(data.test)} test articles; site train sizes {[len(s.train) for s in data.sites]}")
    federated = _federated(config, data, work, model_root)
    methods: dict[str, Any] = {}
    for method in config.methods:
        spec = experiment_spec(config, data.labels, method)
        methods[method] = {
            "peft": spec.peft.model_dump(),
            "learning_rate": spec.training.learning_rate,
            "parameters": parameter_counts(spec, model_root),
            "baselines": _baselines(config, data, model_root, method),
            "federated": federated[method],
        }
        params = methods[method]["parameters"]
        params["uploaded_percent_of_base"] = (
            100 * params["uploaded_parameters"] / max(1, params["base_model_parameters"])
        )
    return {
        "benchmark": "quality",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            **config.model_dump(mode="json", exclude={"configs"}),
            "configs": [c.label for c in config.configs],
        },
        "budget": config.budget(),
        "budget_rule": (
            "same examples seen: federated = sites x rounds x local_steps x batch; centralized trains "
            "sites x rounds x local_steps steps on the pooled data; local-only trains each site "
            "rounds x local_steps steps on its own data"
        ),
        "data": data.summary(),
        "machine": machine_info(),
        "methods": methods,
        "seconds": time.monotonic() - started,
    }
