"""Stage transitions with a fake clock: finetune -> personalize, and personalize rounds' closing rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from coordinator.bootstrap import Services, bootstrap
from coordinator.clock import FakeClock
from coordinator.stages import personalize_metrics
from fedtune.errors import FedtuneError
from fedtune.serde import TaskRecord
from storage import models
from tests.coordinator.test_scheduler import experiment, initialized, push, site_id, task_state
from tests.support.cluster import make_settings, spec_yaml
from tests.support.fake_worker import initial_arrays

PERSONALIZE = """  - kind: personalize
    deadline_seconds: 60
    selection:
      min_sites: {min_sites}
"""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def services(tmp_path: Path, clock: FakeClock) -> Iterator[Services]:
    settings = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'unit.db'}", task_lease_seconds=300)
    built = bootstrap(settings, clock=clock)
    yield built
    built.close()


def _finetune_then_personalize(services: Services, min_sites: int = 2) -> tuple[str, dict[str, str]]:
    spec = spec_yaml(rounds=1, min_sites=2, extra_stage=PERSONALIZE.format(min_sites=min_sites))
    experiment_id, workers = initialized(services, spec, sites=("a", "b"))
    for site in ("a", "b"):
        task = services.tasks.pull(site_id(services, site), workers[site], 0)
        assert task is not None and task.kind == "train"
        push(services, site, task.task_id, initial_arrays(seed=5), 4)
    services.scheduler.tick()  # commits the finetune round
    services.scheduler.tick()  # opens the personalize round
    return experiment_id, workers


def _pull(services: Services, site: str, workers: dict[str, str]) -> TaskRecord:
    task = services.tasks.pull(site_id(services, site), workers[site], 0)
    assert task is not None
    return task


def _report(services: Services, site: str, task: TaskRecord, accuracy: float) -> None:
    metrics = {"global_eval_accuracy": 0.5, "personal_eval_accuracy": accuracy}
    services.tasks.report_result(
        site_id(services, site), task.task_id, ok=True, error="", metrics=metrics, num_examples=10
    )


def _rounds(services: Services, experiment_id: str) -> list[models.Round]:
    with services.uow_factory() as uow:
        rows = uow.session.scalars(
            select(models.Round)
            .where(models.Round.experiment_id == experiment_id)
            .order_by(models.Round.stage_index, models.Round.round)
        ).all()
        uow.session.expunge_all()
        return list(rows)


def _version_count(services: Services, experiment_id: str) -> int:
    with services.uow_factory() as uow:
        return int(
            uow.session.scalar(
                select(func.count(models.ModelVersion.id)).where(
                    models.ModelVersion.experiment_id == experiment_id
                )
            )
            or 0
        )


def test_personalize_stage_sends_personalize_tasks_from_the_latest_version(services: Services) -> None:
    # Prepare
    experiment_id, workers = _finetune_then_personalize(services)

    # Execute
    task = _pull(services, "a", workers)

    # Assert
    finetune, personalize = _rounds(services, experiment_id)
    assert task.kind == "personalize" and task.stage == "personalize" and task.stage_index == 1
    assert task.model_version_id == finetune.model_version_id
    assert personalize.state == "collecting" and personalize.base_version_id == finetune.model_version_id


def test_personalize_round_closes_with_per_site_metrics_and_no_new_version(services: Services) -> None:
    # Prepare
    experiment_id, workers = _finetune_then_personalize(services)
    versions_before = _version_count(services, experiment_id)

    # Execute
    for site, accuracy in (("a", 0.75), ("b", 0.875)):
        _report(services, site, _pull(services, site, workers), accuracy)
    services.scheduler.tick()

    # Assert
    personalize = _rounds(services, experiment_id)[-1]
    assert personalize.state == "committed" and personalize.model_version_id is None
    assert personalize.metrics["a.personal_eval_accuracy"] == 0.75
    assert personalize.metrics["b.personal_eval_accuracy"] == 0.875
    assert personalize.metrics["personal_eval_accuracy"] == pytest.approx(0.8125)
    assert personalize.metrics["personal_gain_accuracy"] == pytest.approx(0.3125)
    assert experiment(services, experiment_id).state == "completed"
    assert _version_count(services, experiment_id) == versions_before
    with services.uow_factory() as uow:
        stage = uow.session.scalars(
            select(models.Stage).where(
                models.Stage.experiment_id == experiment_id, models.Stage.stage_index == 1
            )
        ).one()
        assert stage.state == "completed"


def test_personalize_round_waits_for_every_task_before_the_deadline(services: Services) -> None:
    # Prepare
    experiment_id, workers = _finetune_then_personalize(services, min_sites=1)

    # Execute
    _report(services, "a", _pull(services, "a", workers), 0.75)
    services.scheduler.tick()

    # Assert
    assert _rounds(services, experiment_id)[-1].state == "collecting"
    assert experiment(services, experiment_id).state == "running"


def test_personalize_deadline_with_enough_sites_commits_and_cancels_the_rest(
    services: Services, clock: FakeClock
) -> None:
    # Prepare
    experiment_id, workers = _finetune_then_personalize(services, min_sites=1)
    _report(services, "a", _pull(services, "a", workers), 0.75)
    late = _pull(services, "b", workers)

    # Execute
    clock.advance(61)
    for site in ("a", "b"):
        services.tasks.heartbeat(site_id(services, site), workers[site])
    services.scheduler.tick()

    # Assert
    personalize = _rounds(services, experiment_id)[-1]
    assert personalize.state == "committed" and personalize.metrics["sites_done"] == 1.0
    assert "b.personal_eval_accuracy" not in personalize.metrics
    assert task_state(services, late.task_id) == "cancelled"
    assert experiment(services, experiment_id).state == "completed"


def test_personalize_deadline_with_too_few_sites_fails_the_experiment(
    services: Services, clock: FakeClock
) -> None:
    # Prepare
    experiment_id, workers = _finetune_then_personalize(services, min_sites=2)
    _report(services, "a", _pull(services, "a", workers), 0.75)

    # Execute
    clock.advance(61)
    for site in ("a", "b"):
        services.tasks.heartbeat(site_id(services, site), workers[site])
    services.scheduler.tick()

    # Assert
    personalize = _rounds(services, experiment_id)[-1]
    assert personalize.state == "failed" and "min_sites=2" in personalize.reason
    assert experiment(services, experiment_id).state == "failed"


def test_personalize_task_cannot_push_an_update(services: Services) -> None:
    # Prepare
    _, workers = _finetune_then_personalize(services)
    task = _pull(services, "a", workers)

    # Execute / Assert
    with pytest.raises(FedtuneError, match="use ReportResult"):
        push(services, "a", task.task_id, initial_arrays(seed=6), 4)


def test_personalize_metrics_weight_means_by_examples() -> None:
    # Execute
    metrics = personalize_metrics(
        [("b", 30, {"personal_eval_accuracy": 1.0}), ("a", 10, {"personal_eval_accuracy": 0.0})]
    )

    # Assert
    assert metrics["personal_eval_accuracy"] == pytest.approx(0.75)
    assert metrics["a.personal_eval_accuracy"] == 0.0 and metrics["sites_done"] == 2.0
