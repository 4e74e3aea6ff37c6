"""What leaves a site under privacy.dp level site and privacy.report_metrics (worker/privacy.py): the
clip, the split of the noise under secure aggregation, withheld and noised metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedtune.dp_mechanism import site_noise
from fedtune.errors import FedtuneError
from fedtune.spec import DpSpec, PrivacySpec
from worker.privacy import LOSS_BOUND, noise_scale, reported_metrics, site_level_update

DP = DpSpec(level="site", noise_multiplier=1.5, clip_norm=2.0)


def _arrays(value: float, size: int = 50_000) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    global_arrays = {"a": np.zeros(size // 2, np.float32), "b": np.ones(size // 2, np.float32)}
    trained = {name: (g + value).astype(np.float32) for name, g in global_arrays.items()}
    return trained, global_arrays


def _delta(sent: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([(sent[n] - global_arrays[n]).astype(np.float64) for n in sorted(sent)])


def test_who_adds_the_noise_depends_on_secure_aggregation() -> None:
    assert site_noise(DP, False, 10) == site_noise(DP, False, 1)
    assert (
        site_noise(DP, False, 10).sum_std == pytest.approx(3.0)
        and site_noise(DP, False, 10).per_site_std == 0
    )
    split = site_noise(DP, True, 9)
    assert split.sum_std == 0 and split.per_site_std == pytest.approx(3.0 / 3)
    with pytest.raises(FedtuneError, match="at least one site"):
        site_noise(DP, True, 0)


def test_without_secure_aggregation_a_site_only_clips() -> None:
    trained, global_arrays = _arrays(0.1)  # norm 0.1 * sqrt(50000) ~ 22 > clip 2
    sent = site_level_update(trained, global_arrays, DP, secure_aggregation=False, sites_in_round=None)
    delta = _delta(sent, global_arrays)
    assert float(np.linalg.norm(delta)) == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(delta, delta[0], rtol=1e-4)  # a scaling, no noise

    small, _ = _arrays(0.001)  # norm 0.22 < clip: unchanged
    unclipped = site_level_update(small, global_arrays, DP, secure_aggregation=False, sites_in_round=None)
    np.testing.assert_allclose(_delta(unclipped, global_arrays), 0.001, rtol=1e-3)


def test_with_secure_aggregation_each_site_adds_its_share_and_the_shares_sum_to_the_full_noise() -> None:
    # Prepare: n sites whose updates are zero, so the sum is the noise alone
    n = 8
    trained, global_arrays = _arrays(0.0)

    # Execute
    shares = [
        _delta(
            site_level_update(trained, global_arrays, DP, secure_aggregation=True, sites_in_round=n),
            global_arrays,
        )
        for _ in range(n)
    ]

    # Assert: each share ~ N(0, (zC)^2 / n); their sum ~ N(0, (zC)^2) (50k elements: within 2%)
    total = DP.noise_multiplier * DP.clip_norm
    assert float(shares[0].std()) == pytest.approx(total / math.sqrt(n), rel=0.02)
    assert float(np.sum(shares, axis=0).std()) == pytest.approx(total, rel=0.02)
    assert not np.allclose(shares[0], shares[1])  # independent draws


def test_split_noise_needs_the_rounds_number_of_sites() -> None:
    trained, global_arrays = _arrays(0.0, 10)
    with pytest.raises(FedtuneError, match="number of selected sites"):
        site_level_update(trained, global_arrays, DP, secure_aggregation=True, sites_in_round=None)


METRICS = {
    "train_loss": 0.7,
    "train_steps": 12.0,
    "train_seconds": 3.0,
    "eval_loss": 0.5,
    "eval_accuracy": 0.8,
    "eval_examples": 40.0,
    "dp_epsilon": 2.5,
    "dp_steps": 12.0,
    "worker_peak_rss_mb": 400.0,
    "prompt_tokens": 1234.0,
}


def test_send_reports_everything_as_measured() -> None:
    assert reported_metrics(METRICS, PrivacySpec(), 200) == METRICS


def test_withhold_keeps_only_operational_and_accounting_figures() -> None:
    out = reported_metrics(METRICS, PrivacySpec(report_metrics="withhold"), 200)
    assert out == {
        k: METRICS[k]
        for k in ("train_steps", "train_seconds", "dp_epsilon", "dp_steps", "worker_peak_rss_mb")
    }


def test_noise_adds_laplace_noise_of_the_documented_scale() -> None:
    # Scale: bound / (examples behind the figure * epsilon 1)
    assert noise_scale("eval_accuracy", METRICS, 200) == pytest.approx(1 / 40)
    assert noise_scale("eval_loss", METRICS, 200) == pytest.approx(LOSS_BOUND / 40)
    assert noise_scale("train_loss", METRICS, 200) == pytest.approx(LOSS_BOUND / 200)
    assert noise_scale("prompt_tokens", METRICS, 200) is None  # not a loss or accuracy: withheld

    rng = np.random.default_rng(0)
    draws = [reported_metrics(METRICS, PrivacySpec(report_metrics="noise"), 200, rng) for _ in range(4000)]
    assert set(draws[0]) == {
        "train_loss",
        "eval_loss",
        "eval_accuracy",
        "train_steps",
        "train_seconds",
        "dp_epsilon",
        "dp_steps",
        "worker_peak_rss_mb",
    }
    accuracy = np.array([d["eval_accuracy"] for d in draws])
    # Laplace(b): mean 0, std b * sqrt(2)
    assert float(np.median(accuracy)) == pytest.approx(0.8, abs=0.01)
    assert float(accuracy.std()) == pytest.approx(math.sqrt(2) / 40, rel=0.1)
    assert draws[0]["train_steps"] == 12.0  # operational figures are exact
