"""Centralized and local-only baselines, trained in this process with the worker's own functions.

Both use the federated run's spec (model, PEFT method, batch size, learning rate, seed) and the
budget rule in `bench.config`; both are scored on the held-out test set with
`worker.evaluation.evaluate`.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.dataset import BenchData
from demo.data import Article
from fedtune.spec import ExperimentSpec, TrainingSpec


def _examples(articles: list[Article], labels: list[str]) -> list[Any]:
    from worker.data import Example

    return [Example(a.text, labels.index(a.label)) for a in articles]


def _train_and_test(
    spec: ExperimentSpec,
    model_root: Path,
    train_articles: list[Article],
    test: list[Article],
    steps: int,
    site: str,
) -> dict[str, float]:
    import torch

    from worker.device import select_device
    from worker.evaluation import evaluate
    from worker.model_factory import ModelFactory
    from worker.training import train

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    labels = spec.labels or []
    device = select_device("cpu")
    built = ModelFactory().model(spec, model_root, device)  # a fresh model per baseline
    training = TrainingSpec.model_validate({**spec.training.model_dump(), "max_steps": steps})
    result = train(
        built.model,
        built.tokenizer,
        _examples(train_articles, labels),
        task=spec.task,
        training=training,
        device=device,
        site=site,
        progress=lambda _line: None,
    )
    started = time.perf_counter()
    metrics = evaluate(
        built.model,
        built.tokenizer,
        _examples(test, labels),
        task=spec.task,
        device=device,
        batch_size=max(32, training.batch_size),
        max_length=training.max_length,
        prefix="test_",
    )
    return {
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "train_loss": result.train_loss,
        "train_steps": float(result.steps),
        "train_examples": float(result.num_examples),
        "train_seconds": result.seconds,
        "test_seconds": time.perf_counter() - started,
    }


def centralized(
    config: BenchConfig, data: BenchData, spec: ExperimentSpec, model_root: Path
) -> dict[str, Any]:
    """Pool every site's train split; train sites x rounds x local_steps steps; score on the test set.

    Plain CE: logit adjustment corrects a site's own label skew, and the pooled data is roughly balanced.
    """
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"logit_adjustment": 0.0})})
    pooled = [a for site in data.sites for a in site.train]
    steps = config.budget()["centralized_steps"]
    return _train_and_test(spec, model_root, pooled, data.test, steps, site="centralized")


def local_only(
    config: BenchConfig, data: BenchData, spec: ExperimentSpec, model_root: Path
) -> dict[str, Any]:
    """Each site trains rounds x local_steps steps on its own split alone; each is scored on the test set."""
    steps = config.budget()["local_only_steps_per_site"]
    per_site = {
        site.name: _train_and_test(spec, model_root, site.train, data.test, steps, site=site.name)
        for site in data.sites
    }
    accuracies = [m["test_accuracy"] for m in per_site.values()]
    return {
        "test_accuracy_mean": statistics.fmean(accuracies),
        "test_accuracy_min": min(accuracies),
        "test_accuracy_max": max(accuracies),
        "sites": per_site,
    }


def parameter_counts(spec: ExperimentSpec, model_root: Path) -> dict[str, int]:
    """Parameters of the base model (task head included) and of the tensors a site uploads."""
    from worker.device import select_device
    from worker.model import frozen_arrays, trainable_arrays
    from worker.model_factory import ModelFactory

    built = ModelFactory().model(spec, model_root, select_device())
    _trainable, total = built.model.get_nb_trainable_parameters()
    uploaded = sum(a.size for a in trainable_arrays(built.model).values())
    adapter = uploaded + sum(a.size for a in frozen_arrays(built.model).values())
    return {"base_model_parameters": int(total - adapter), "uploaded_parameters": int(uploaded)}
