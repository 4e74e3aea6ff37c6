"""privacy.dp and privacy.report_metrics in the spec (decision 36): what is accepted, and what is refused
with INVALID_SPEC naming the field and what to do."""

from __future__ import annotations

import pytest

from coordinator.experiments import validate_spec
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import load_spec_yaml

DP = "{level: %s, noise_multiplier: 1.1, clip_norm: 1.0, target_epsilon: 8, delta: 1.0e-5}"


def _spec(
    level: str = "site",
    *,
    task: str = "sequence-classification",
    training: str = "{}",
    peft: str = "{method: lora}",
    strategy: str = "fedavg",
    stages: str = "",
    privacy_extra: str = "",
) -> str:
    labels = "labels: [a, b]\n" if task == "sequence-classification" else ""
    stage_list = stages or f"[{{kind: finetune, strategy: {{name: {strategy}}}}}]"
    return (
        f"name: t\nbase_model: {{name: tiny-bert}}\ntask: {task}\n{labels}"
        f"peft: {peft}\ntraining: {training}\nstages: {stage_list}\n"
        f"privacy: {{dp: {DP % level}{privacy_extra}}}\n"
    )


def _error(text: str) -> str:
    with pytest.raises(FedtuneError) as caught:
        validate_spec(text)
    assert caught.value.code is ErrorCode.INVALID_SPEC
    return caught.value.message


@pytest.mark.parametrize("level", ["site", "record"])
def test_accounted_dp_is_accepted_at_both_levels(level: str) -> None:
    spec = validate_spec(_spec(level, strategy="fedprox"))
    assert spec.privacy.dp is not None and spec.privacy.dp.level == level
    assert spec.privacy.dp.target_epsilon == 8 and spec.privacy.dp.accountant == "rdp"


def test_site_level_dp_works_with_a_language_model_and_a_global_stage() -> None:
    stages = "[{kind: global}, {kind: finetune}]"
    spec = validate_spec(_spec("site", task="causal-lm", stages=stages))
    assert spec.privacy.dp is not None


@pytest.mark.parametrize("choice", ["send", "withhold", "noise"])
def test_report_metrics_choices_are_accepted(choice: str) -> None:
    text = "name: t\nbase_model: {name: m}\nlabels: [a, b]\nstages: [{kind: finetune}]\n"
    spec = load_spec_yaml(text + f"privacy: {{report_metrics: {choice}}}\n")
    assert spec.privacy.report_metrics == choice


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (
            {"task": "causal-lm"},
            ["privacy.dp.level: record needs task sequence-classification", "use level site"],
        ),
        ({"task": "instruction"}, ["privacy.dp.level: record needs task", "instruction"]),
        ({"peft": "{method: ia3}"}, ["privacy.dp.level: record supports peft method lora"]),
        ({"peft": "{method: lora, use_dora: true}"}, ["without DoRA"]),
        (
            {"training": "{gradient_accumulation_steps: 4}"},
            ["training.gradient_accumulation_steps must be 1"],
        ),
        (
            {"training": "{gradient_checkpointing: true}"},
            ["training.gradient_checkpointing is not supported"],
        ),
        ({"training": "{max_grad_norm: 1.0}"}, ["training.max_grad_norm", "remove max_grad_norm"]),
        ({"training": "{logit_adjustment: 1.0}"}, ["training.logit_adjustment", "set it to 0"]),
        (
            {"stages": "[{kind: finetune, training: {gradient_accumulation_steps: 2}}]"},
            ["stages.0.training.gradient_accumulation_steps must be 1"],
        ),
        ({"stages": "[{kind: global}, {kind: finetune}]"}, ["stages.0.kind: a global stage"]),
    ],
)
def test_record_level_refuses_what_dp_sgd_cannot_honour(kwargs: dict[str, str], fragments: list[str]) -> None:
    message = _error(_spec("record", **kwargs))
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean", "fedavg_adaptive"])
def test_site_level_refuses_strategies_that_combine_each_sites_update(strategy: str) -> None:
    message = _error(_spec("site", strategy=strategy))
    assert f"stages.0.strategy.name: {strategy} combines each site's own update" in message
    assert "fedavg" in message and "level record" in message


def test_robust_strategies_are_fine_at_record_level() -> None:
    assert validate_spec(_spec("record", strategy="median")).stages[0].strategy.name == "median"


@pytest.mark.parametrize("level", ["site", "record"])
def test_fedncm_is_refused_with_dp(level: str) -> None:
    message = _error(_spec(level, strategy="fedncm"))
    assert (
        "stages.0.strategy.name: fedncm sends per-class feature sums" in message and "privacy.dp" in message
    )


def test_a_packing_spec_is_refused_at_record_level() -> None:
    text = _spec("record", task="instruction", training="{packing: true}")
    assert "record" in _error(text)
