"""A global stage then a finetune stage, with a fake clock: the finetune stage's own INIT, base_version_id
on every finetune task, and lineage base -> global versions -> finetune versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from coordinator.bootstrap import Services, bootstrap
from coordinator.clock import FakeClock
from coordinator.experiments import validate_spec
from fedtune.errors import FedtuneError
from fedtune.serde import TaskRecord
from storage import models
from tests.coordinator.test_scheduler import experiment, push, register, site_id
from tests.support.cluster import make_settings
from tests.support.fake_worker import initial_arrays

SPEC = """
name: global-then-finetune
base_model: {name: tiny-model}
task: causal-lm
seed: 7
stages:
  - kind: global
    rounds: 1
    selection: {min_sites: 2}
  - kind: finetune
    rounds: 1
    selection: {min_sites: 2}
"""


def finetune_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"head.lora_A.weight": rng.standard_normal((2, 8)).astype(np.float32)}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'unit.db'}", task_lease_seconds=300)
    built = bootstrap(settings, clock=FakeClock())
    yield built
    built.close()


def _pull(services: Services, site: str, workers: dict[str, str]) -> TaskRecord:
    task = services.tasks.pull(site_id(services, site), workers[site], 0)
    assert task is not None
    return task


def _versions(services: Services, experiment_id: str) -> list[models.ModelVersion]:
    with services.uow_factory() as uow:
        rows = list(
            uow.session.scalars(
                select(models.ModelVersion)
                .where(models.ModelVersion.experiment_id == experiment_id)
                .order_by(models.ModelVersion.version)
            )
        )
        uow.session.expunge_all()
        return rows


def _through_global(services: Services) -> tuple[str, dict[str, str], list[TaskRecord]]:
    """Submit, run the global INIT and its one round; returns the global train tasks."""
    workers = {site: register(services, site) for site in ("a", "b")}
    experiment_id = services.experiments.submit(SPEC, start=True)
    services.scheduler.tick()
    init = _pull(services, "a", workers)
    assert init.kind == "init" and init.stage_index == 0
    push(services, "a", init.task_id, initial_arrays(), 0)
    services.scheduler.tick()  # opens global round 1
    trains = [_pull(services, site, workers) for site in ("a", "b")]
    for site, task in zip(("a", "b"), trains, strict=True):
        push(services, site, task.task_id, initial_arrays(seed=3), 5)
    services.scheduler.tick()  # commits the global round: the stage is complete
    services.scheduler.tick()  # the finetune stage's INIT task
    return experiment_id, workers, trains


def test_global_stage_tasks_build_on_the_sites_own_base(services: Services) -> None:
    # Execute
    _, _, trains = _through_global(services)

    # Assert
    assert [(t.kind, t.stage, t.stage_index, t.base_version_id) for t in trains] == [
        ("train", "global", 0, ""),
        ("train", "global", 0, ""),
    ]


def test_finetune_after_global_starts_with_its_own_init_on_the_global_version(services: Services) -> None:
    # Prepare
    experiment_id, workers, _ = _through_global(services)
    global_v0, global_v1 = _versions(services, experiment_id)

    # Execute
    init = _pull(services, "a", workers)
    push(services, "a", init.task_id, finetune_arrays(), 0)

    # Assert
    assert (init.kind, init.stage, init.stage_index) == ("init", "finetune", 1)
    assert init.base_version_id == global_v1.id and init.model_version_id == ""
    assert (global_v1.stage_name, global_v1.kind, global_v1.parent_id) == ("global", "adapter", global_v0.id)
    finetune_v0 = _versions(services, experiment_id)[-1]
    assert (finetune_v0.version, finetune_v0.stage_index, finetune_v0.stage_name) == (2, 1, "finetune")
    assert finetune_v0.parent_id == global_v1.id and finetune_v0.round == 0
    assert "base_version.json" in finetune_v0.files


def test_finetune_tasks_carry_the_global_base_and_lineage_reads_base_global_finetune(
    services: Services,
) -> None:
    # Prepare
    experiment_id, workers, _ = _through_global(services)
    push(services, "a", _pull(services, "a", workers).task_id, finetune_arrays(), 0)
    services.scheduler.tick()  # opens finetune round 1

    # Execute
    trains = [_pull(services, site, workers) for site in ("a", "b")]
    for site, task in zip(("a", "b"), trains, strict=True):
        push(services, site, task.task_id, finetune_arrays(seed=4), 5)
    services.scheduler.tick()

    # Assert
    versions = _versions(services, experiment_id)
    global_v0, global_v1, finetune_v0, finetune_v1 = versions
    assert all(t.base_version_id == global_v1.id and t.stage_index == 1 for t in trains)
    assert all(t.model_version_id == finetune_v0.id for t in trains)
    assert [v.parent_id for v in versions] == [None, global_v0.id, global_v1.id, finetune_v0.id]
    assert [v.stage_name for v in versions] == ["global", "global", "finetune", "finetune"]
    assert experiment(services, experiment_id).state == "completed"
    with services.uow_factory() as uow:
        digest = uow.session.get(models.ModelVersion, finetune_v1.id).files["base_version.json"]
    with services.blobs.open(digest) as handle:
        assert json.loads(handle.read())["base_version_id"] == global_v1.id


@pytest.mark.parametrize(
    ("stages", "text"),
    [
        ("[{kind: finetune}, {kind: global}]", "stages.1.kind: a global stage must come before"),
        ("[{kind: global}, {kind: personalize}]", "stages.1.kind: a personalize stage needs a finetune"),
    ],
)
def test_submit_rejects_global_stages_out_of_order(stages: str, text: str) -> None:
    spec = f"name: x\nbase_model: {{name: m}}\ntask: causal-lm\nstages: {stages}\n"
    with pytest.raises(FedtuneError, match=text):
        validate_spec(spec)


FEDNCM_SPEC = "name: x\nbase_model: {name: m}\ntask: %s\nlabels: [a, b]\n%sstages: %s\n"


@pytest.mark.parametrize(
    ("task", "extra", "stages", "text"),
    [
        (
            "sequence-classification",
            "privacy: {clip_norm: 1.0, noise_multiplier: 0.5}\n",
            "[{kind: finetune, strategy: {name: fedncm}}]",
            "stages.0.strategy.name: fedncm sends per-class",
        ),
        (
            "sequence-classification",
            "",
            "[{kind: global, strategy: {name: fedncm}}, {kind: finetune}]",
            "stages.0.strategy.name: fedncm runs in a finetune stage",
        ),
        ("causal-lm", "", "[{kind: finetune, strategy: {name: fedncm}}]", "of a sequence-classification"),
    ],
    ids=["with-dp", "global-stage", "causal-lm"],
)
def test_submit_rejects_fedncm_where_class_statistics_do_not_fit(
    task: str, extra: str, stages: str, text: str
) -> None:
    with pytest.raises(FedtuneError, match=text):
        validate_spec(FEDNCM_SPEC % (task, extra, stages))


def test_submit_accepts_a_fedncm_head_stage_before_finetune() -> None:
    spec = validate_spec(
        FEDNCM_SPEC
        % (
            "sequence-classification",
            "",
            "[{name: head, kind: finetune, strategy: {name: fedncm}}, {kind: finetune}]",
        )
    )
    assert [s.stage_name for s in spec.stages] == ["head", "finetune"]
