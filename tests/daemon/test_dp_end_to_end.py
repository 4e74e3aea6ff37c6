"""Accounted DP end to end, as a user runs it: `fedtune coordinator serve`, two `fedtune worker run`
doing DP-SGD on a tiny BERT + LoRA, `fedtune admin` showing (epsilon, delta); metrics withheld or
noised at the sites (decision 36)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedtune.privacy_accounting import PrivacyLedger
from tests.daemon.cluster import E2E_SITES, Cluster
from tests.fixtures.tiny import tiny_spec

pytestmark = pytest.mark.slow
TRAINING = {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32, "seed": 0}


def _run(
    cluster: Cluster,
    tmp_path: Path,
    model_root: Path,
    data_roots: dict[str, Path],
    privacy: dict[str, Any],
    rounds: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, data_roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)
    spec = tiny_spec(training=TRAINING, privacy=privacy, stages=[{"kind": "finetune", "rounds": rounds}])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    shown = cluster.wait_experiment(experiment_id, timeout=300)
    assert shown["state"] == "completed", shown
    return shown, cluster.admin("rounds", experiment_id)["rounds"]


def _site_epsilons(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Each site's epsilon, composed here from what its updates reported."""
    ledgers: dict[str, PrivacyLedger] = {}
    for rnd in rounds:
        for update in rnd["site_updates"]:
            m = update["metrics"]
            ledger = ledgers.setdefault(update["site"], PrivacyLedger(delta=1e-5))
            ledger.record(m["dp_noise_multiplier"], m["dp_sample_rate"], int(m["dp_steps"]))
    return {site: ledger.epsilon() for site, ledger in ledgers.items()}


def test_record_level_dp_with_withheld_metrics(
    cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    privacy = {
        "dp": {"level": "record", "noise_multiplier": 1.0, "clip_norm": 1.0},
        "report_metrics": "withhold",
    }
    shown, rounds = _run(cluster, tmp_path, model_root, data_roots, privacy, rounds=2)

    # Assert: two rounds, no loss or accuracy anywhere, each site's DP-SGD figures and epsilon
    assert [r["state"] for r in rounds] == ["committed", "committed"]
    for rnd in rounds:
        assert not any("loss" in k or "accuracy" in k for k in rnd["metrics"]), rnd["metrics"]
        for update in rnd["site_updates"]:
            m = update["metrics"]
            assert not any("loss" in k or "accuracy" in k or "eval_" in k for k in m), m
            assert m["dp_steps"] == 6 and m["dp_sample_rate"] == pytest.approx(8 / 48)
    expected = _site_epsilons(rounds)
    privacy_shown = shown["privacy"]
    assert privacy_shown["level"] == "record" and privacy_shown["delta"] == 1e-5
    assert privacy_shown["site_epsilons"] == pytest.approx(expected)
    assert privacy_shown["epsilon"] == pytest.approx(max(expected.values()))
    assert rounds[-1]["metrics"]["privacy.epsilon"] == pytest.approx(max(expected.values()))


def test_record_level_budget_stops_after_the_round_that_fits_and_metrics_are_noised(
    cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # A budget that one round of 6 steps at q = 8/48 fits and a second would pass
    one = PrivacyLedger(delta=1e-5)
    one.record(1.0, 8 / 48, 6)
    target = (one.epsilon() + one.epsilon_after(1.0, 8 / 48, 6)) / 2
    dp = {"level": "record", "noise_multiplier": 1.0, "clip_norm": 1.0, "target_epsilon": target}
    shown, rounds = _run(cluster, tmp_path, model_root, data_roots, {"dp": dp, "report_metrics": "noise"}, 5)

    assert [r["round"] for r in rounds] == [1]
    assert "privacy budget is spent" in shown["privacy"]["budget_spent"]
    assert shown["privacy"]["epsilon"] == pytest.approx(one.epsilon())
    for update in rounds[0]["site_updates"]:
        m = update["metrics"]
        assert "eval_accuracy" in m and "eval_examples" not in m  # noised vs withheld
        assert m["dp_steps"] == 6
