"""The experiment spec: defaults, and errors that name the field to fix."""

from __future__ import annotations

import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import LoraSpec, PromptTuningSpec, load_spec_json, load_spec_yaml

MINIMAL = """
name: t
base_model: {name: tiny-bert}
labels: [a, b]
stages: [{kind: finetune, rounds: 2}]
"""


def _error(text: str) -> FedtuneError:
    with pytest.raises(FedtuneError) as caught:
        load_spec_yaml(text)
    assert caught.value.code is ErrorCode.INVALID_SPEC
    return caught.value


def test_minimal_spec_gets_sensible_defaults() -> None:
    spec = load_spec_yaml(MINIMAL)

    assert isinstance(spec.peft, LoraSpec)
    assert spec.stages[0].strategy.name == "fedavg"
    assert spec.stages[0].stage_name == "finetune"
    assert spec.training_for(0) == spec.training
    assert spec.data.train == "train.jsonl"


def test_spec_round_trips_through_json() -> None:
    spec = load_spec_yaml(MINIMAL + "peft: {method: prompt_tuning, num_virtual_tokens: 8}\n")

    again = load_spec_json(spec.to_json())

    assert again == spec
    assert isinstance(again.peft, PromptTuningSpec)


def test_stage_training_overrides_the_experiment_training() -> None:
    spec = load_spec_yaml(MINIMAL.replace("rounds: 2}", "rounds: 2, training: {max_steps: 3}}"))

    assert spec.training_for(0).max_steps == 3


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("rounds: 2", "rounds: 0"), "stages.0.rounds"),
        (("kind: finetune", "kind: pretrain"), "stages.0.kind"),
        (("labels: [a, b]", "labels: [a, b]\npeft: {method: lora, r: 0}"), "peft.lora.r"),
        (("labels: [a, b]", "labels: [a, b]\npeft: {method: adalora}"), "peft"),
        (("labels: [a, b]", "labels: [a, b]\ntraining: {batch_size: 16, lr: 0.1}"), "training.lr"),
    ],
)
def test_bad_field_is_named_in_the_error(change: tuple[str, str], field: str) -> None:
    err = _error(MINIMAL.replace(*change))

    assert field in err.message


def test_classification_without_labels_says_what_to_add() -> None:
    err = _error(MINIMAL.replace("labels: [a, b]\n", ""))

    assert "labels" in err.message


def test_duplicate_stage_names_are_rejected() -> None:
    err = _error(
        MINIMAL.replace(
            "stages: [{kind: finetune, rounds: 2}]", "stages: [{kind: finetune}, {kind: finetune}]"
        )
    )

    assert "unique" in err.message


@pytest.mark.parametrize("text", ["name: [unclosed", "- just\n- a list\n"])
def test_non_mapping_or_broken_yaml_is_invalid_spec(text: str) -> None:
    _error(text)


def test_logit_adjustment_is_off_by_default_and_accepted_for_classification() -> None:
    assert load_spec_yaml(MINIMAL).training.logit_adjustment == 0.0

    spec = load_spec_yaml(MINIMAL + "training: {logit_adjustment: 1.0}\n")

    assert spec.training.logit_adjustment == 1.0


def test_negative_logit_adjustment_is_named_in_the_error() -> None:
    err = _error(MINIMAL + "training: {logit_adjustment: -1}\n")

    assert "training.logit_adjustment" in err.message


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("training: {logit_adjustment: 1.0}\n", "training.logit_adjustment"),
        (
            "stages: [{kind: finetune, training: {logit_adjustment: 0.5}}]\n",
            "stages.0.training.logit_adjustment",
        ),
    ],
)
def test_logit_adjustment_is_rejected_for_causal_lm(extra: str, where: str) -> None:
    text = "name: t\nbase_model: {name: tiny-llama}\ntask: causal-lm\n" + extra
    if not extra.startswith("stages"):
        text += "stages: [{kind: finetune}]\n"

    err = _error(text)

    assert where in err.message and "sequence-classification" in err.message


def test_causal_lm_with_logit_adjustment_zero_is_fine() -> None:
    text = "name: t\nbase_model: {name: tiny-llama}\ntask: causal-lm\ntraining: {logit_adjustment: 0}\n"

    spec = load_spec_yaml(text + "stages: [{kind: finetune}]\n")

    assert spec.training.logit_adjustment == 0.0


def test_secure_aggregation_is_accepted_next_to_client_side_clipping() -> None:
    spec = load_spec_yaml(MINIMAL + "privacy: {clip_norm: 1.0, secure_aggregation: true}\n")

    assert spec.privacy.secure_aggregation and spec.privacy.clip_norm == 1.0
    assert load_spec_yaml(MINIMAL + "privacy: {secure_aggregation: false}\n").privacy.clip_norm is None
