"""Privacy settings in the spec (issue 10): what the kernel needs is designed, and nothing that is not
wired yet is accepted and silently ignored. Accounted DP and report_metrics:
tests/security/test_dp_spec.py."""

from __future__ import annotations

import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import STRATEGIES_NEEDING_SITE_UPDATES, PrivacySpec, SecAggSpec, load_spec_yaml

MINIMAL = """
name: t
base_model: {name: tiny-bert}
labels: [a, b]
"""


def _spec(privacy: str, strategy: str = "fedavg", selection: str = "{}") -> str:
    stages = f"stages: [{{kind: finetune, strategy: {{name: {strategy}}}, selection: {selection}}}]\n"
    return MINIMAL + stages + f"privacy: {privacy}\n"


def _error(text: str) -> str:
    with pytest.raises(FedtuneError) as caught:
        load_spec_yaml(text)
    assert caught.value.code is ErrorCode.INVALID_SPEC
    return caught.value.message


def test_secure_aggregation_is_accepted_with_a_weighted_mean_strategy() -> None:
    spec = load_spec_yaml(_spec("{secure_aggregation: true, secagg: {clip_range: 4.0}}", strategy="fedadam"))
    assert spec.privacy.secure_aggregation and spec.privacy.secagg.clip_range == 4.0


def test_fedncm_is_refused_with_secure_aggregation_saying_why() -> None:
    message = _error(_spec("{secure_aggregation: true}", strategy="fedncm"))
    assert "stages.0.strategy.name: fedncm cannot run with privacy.secure_aggregation" in message
    assert "unweighted" in message and "clip_range" in message


@pytest.mark.parametrize("strategy", sorted(STRATEGIES_NEEDING_SITE_UPDATES))
def test_strategies_needing_each_sites_update_are_refused_with_secure_aggregation(strategy: str) -> None:
    message = _error(_spec("{secure_aggregation: true}", strategy=strategy))
    assert f"stages.0.strategy.name: {strategy} needs each site's own update" in message
    assert "fedavg" in message  # says what to use instead


def test_the_same_strategies_are_fine_without_secure_aggregation() -> None:
    assert load_spec_yaml(_spec("{}", strategy="median")).stages[0].strategy.name == "median"


def test_a_stage_listing_fewer_than_three_sites_is_refused_with_secure_aggregation() -> None:
    message = _error(_spec("{secure_aggregation: true}", selection="{sites: [a, b]}"))
    assert "stages.0.selection.sites: secure aggregation needs at least 3 sites" in message


def test_secagg_settings_without_secure_aggregation_are_refused() -> None:
    message = _error(_spec("{secagg: {clip_range: 4.0}}"))
    assert "secagg settings are given but secure_aggregation is false" in message


@pytest.mark.parametrize(
    ("secagg", "fragment"),
    [
        ("{neighbours: 10, threshold: 5}", "must be in [6, 10]"),
        ("{neighbours: 10, threshold: 11}", "must be in [6, 10]"),
        ("{quantization_bits: 16}", "quantization_bits"),
        ("{clip_range: 0}", "clip_range"),
        ("{neighbours: 1}", "neighbours"),
    ],
)
def test_bad_secagg_settings_are_refused(secagg: str, fragment: str) -> None:
    assert fragment in _error(_spec(f"{{secure_aggregation: true, secagg: {secagg}}}"))


def test_dp_together_with_client_side_noise_is_refused() -> None:
    message = _error(_spec("{clip_norm: 1.0, dp: {noise_multiplier: 1.1, clip_norm: 1.0}}"))
    assert "privacy.dp replaces privacy.clip_norm" in message


@pytest.mark.parametrize(
    ("dp", "fragment"),
    [
        ("{noise_multiplier: 0, clip_norm: 1.0}", "noise_multiplier"),
        ("{noise_multiplier: 1.0, clip_norm: 1.0, delta: 1.0}", "delta"),
        ("{noise_multiplier: 1.0, clip_norm: 1.0, level: user}", "level"),
        ("{noise_multiplier: 1.0}", "clip_norm"),
    ],
)
def test_bad_dp_settings_are_refused(dp: str, fragment: str) -> None:
    assert fragment in _error(_spec(f"{{dp: {dp}}}"))


def test_default_privacy_settings_load_and_the_designed_fields_exist() -> None:
    spec = load_spec_yaml(_spec("{report_metrics: send, secure_aggregation: false}"))
    assert spec.privacy == PrivacySpec()
    assert spec.privacy.secagg == SecAggSpec(
        clip_range=8.0, quantization_bits=32, neighbours=None, threshold=None
    )
    assert spec.privacy.dp is None and spec.privacy.report_metrics == "send"
