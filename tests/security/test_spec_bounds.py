"""Every number in an experiment spec is finite and in a sane range, no string holds NUL, and whatever
is accepted reloads from the JSON the coordinator stores (`.inf` used to be accepted, left the
experiment `running` forever, and its stored spec no longer loaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from fedtune.errors import FedtuneError
from fedtune.spec import load_spec_json, load_spec_yaml
from fedtune.v1 import admin_pb2
from tests.support.cluster import Cluster

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def spec(stage: str = "", top: str = "", options: str = "{}") -> str:
    return f"""
name: bounds
base_model: {{name: tiny-model}}
task: causal-lm
{top}
stages:
  - kind: finetune
    strategy: {{name: fedadam, options: {options}}}
    {stage}
"""


BAD_SPECS = {
    "infinite deadline": (spec(stage="deadline_seconds: .inf"), "deadline_seconds"),
    "nan deadline": (spec(stage="deadline_seconds: .nan"), "deadline_seconds"),
    "deadline of a year": (spec(stage="deadline_seconds: 31536000"), "deadline_seconds"),
    "infinite learning rate": (spec(top="training: {learning_rate: .inf}"), "learning_rate"),
    "nan epochs": (spec(top="training: {epochs: .nan}"), "epochs"),
    "negative infinite weight decay": (spec(top="training: {weight_decay: -.inf}"), "weight_decay"),
    "nan proximal mu": (spec(stage="training: {proximal_mu: .nan}"), "proximal_mu"),
    "infinite clip norm": (spec(top="privacy: {clip_norm: .inf}"), "clip_norm"),
    "nan noise": (spec(top="privacy: {noise_multiplier: .nan}"), "noise_multiplier"),
    "infinite lora alpha": (spec(top="peft: {method: lora, alpha: .inf}"), "alpha"),
    "infinite option": (spec(options="{eta: .inf}"), "options.eta"),
    "nan option in a list": (spec(options="{betas: [0.9, .nan]}"), "options.betas.1"),
    "huge option": (spec(options="{eta: 1.0e+300}"), "options.eta"),
    "NUL in an option": (spec(options='{note: "a\\0b"}'), "options.note"),
    "NUL in the name": (spec().replace("name: bounds", 'name: "bo\\0unds"'), "name"),
    "stage name over 100 chars": (spec(stage="name: " + "s" * 101), "name"),
    "seed past 32 bits": (spec(top="seed: 1099511627776"), "seed"),
    "min_sites past INTEGER": (spec(stage="selection: {min_sites: 3000000000}"), "min_sites"),
}


@pytest.mark.parametrize("text, field", BAD_SPECS.values(), ids=list(BAD_SPECS))
def test_a_non_finite_or_out_of_range_spec_value_is_refused_naming_its_field(text: str, field: str) -> None:
    # Execute
    with pytest.raises(FedtuneError) as caught:
        load_spec_yaml(text)

    # Assert
    assert caught.value.code.value == "invalid_spec"
    assert field in caught.value.message


ACCEPTED = [p.read_text() for p in EXAMPLES] + [
    spec(stage="deadline_seconds: 2592000", top="training: {learning_rate: 100, epochs: 10000}"),
    spec(options="{eta: 1.0e+12, tau: 1.0e-12, betas: [0.9, 0.99]}", top="seed: 4294967295"),
    spec(stage="name: " + "s" * 100, top="privacy: {clip_norm: 1000000, noise_multiplier: 1000}"),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_every_accepted_spec_reloads_from_its_stored_json(text: str) -> None:
    # Prepare
    accepted = load_spec_yaml(text)

    # Execute: what experiments.submit stores, loaded back as the scheduler and workers do
    reloaded = load_spec_json(accepted.to_json())

    # Assert
    assert reloaded == accepted


def test_submitting_an_infinite_deadline_or_a_long_stage_name_is_invalid_argument_on_every_backend(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare
    admin = cluster_factory().admin()

    # Execute + Assert: refused at the door, never stored (PostgreSQL answered INTERNAL for the name)
    for text, field in (BAD_SPECS["infinite deadline"], BAD_SPECS["stage name over 100 chars"]):
        with pytest.raises(grpc.RpcError) as caught:
            admin.SubmitExperiment(admin_pb2.SubmitExperimentRequest(spec_yaml=text, start=True))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert field in str(caught.value.details())
    assert list(admin.ListExperiments(admin_pb2.ListExperimentsRequest()).experiments) == []
