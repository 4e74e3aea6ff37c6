"""`fedtune bench quality --logit-adjustment`: config, specs and report header (no benchmark run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.config import BenchConfig, experiment_spec, parse_configs, parse_methods
from bench.report import markdown_table
from fedtune.spec import ExperimentSpec

LABELS = ["business", "sport"]


def _config(**overrides: Any) -> BenchConfig:
    data: dict[str, Any] = {
        "configs": parse_configs("centralized,local-only,fedavg,global1+fedavg"),
        "methods": ["lora"],
        "model_dir": Path("/models/m"),
        "model_name": "m",
        "corpus_dir": Path("/corpus"),
        "out_dir": Path("/out"),
    }
    return BenchConfig(**{**data, **overrides})


def test_logit_adjustment_defaults_to_off() -> None:
    spec = experiment_spec(_config(), LABELS, "lora", parse_configs("fedavg")[0])

    assert spec.training.logit_adjustment == 0.0


def test_logit_adjustment_goes_into_federated_and_baseline_training_but_not_the_global_stage() -> None:
    # Prepare
    config = _config(logit_adjustment=1.0)
    # Execute
    federated = experiment_spec(config, LABELS, "lora", parse_configs("global1+fedavg")[0])
    baseline = experiment_spec(config, LABELS, "lora")
    # Assert
    assert federated.training.logit_adjustment == 1.0 and baseline.training.logit_adjustment == 1.0
    global_stage = next(s for s in federated.stages if s.kind == "global")
    assert global_stage.training is not None and global_stage.training.logit_adjustment == 0.0
    assert config.model_dump(mode="json")["logit_adjustment"] == 1.0


def test_centralized_baseline_trains_with_plain_cross_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import baselines
    from bench.dataset import BenchData

    seen: list[float] = []

    def fake_train_and_test(spec: ExperimentSpec, *_args: Any, **_kwargs: Any) -> dict[str, float]:
        seen.append(spec.training.logit_adjustment)
        return {}

    monkeypatch.setattr(baselines, "_train_and_test", fake_train_and_test)
    config = _config(logit_adjustment=1.0)
    data = BenchData(labels=LABELS, test=[], sites=[], sites_root=Path("/sites"))

    baselines.centralized(config, data, experiment_spec(config, LABELS, "lora"), Path("/models"))

    assert seen == [0.0]


def test_markdown_header_shows_the_logit_adjustment() -> None:
    results = {
        "config": {**_config(logit_adjustment=1.0).model_dump(mode="json"), "configs": []},
        "budget": {"federated_examples_seen": 1},
        "data": {"test_examples": 1, "sites": {}},
        "methods": {},
    }

    table = markdown_table(results)

    assert "logit adjustment tau 1.0" in table and "centralized uses plain cross-entropy" in table


def test_cli_flag_is_documented_and_rejects_negative_tau() -> None:
    from bench.cli import bench_group

    runner = CliRunner()
    help_text = runner.invoke(bench_group, ["quality", "--help"]).output
    bad = runner.invoke(bench_group, ["quality", "--logit-adjustment", "-1"])

    assert "--logit-adjustment TAU" in help_text and "centralized" in help_text
    assert bad.exit_code == 2 and "logit-adjustment" in bad.output


def test_ncm_prefix_adds_one_fedncm_head_stage_before_finetune() -> None:
    run = parse_configs("global2+ncm+fedprox:mu=0.1")[0]

    spec = experiment_spec(_config(), LABELS, "lora", run)

    assert run.label == "global2+ncm+fedprox:mu=0.1" and run.head_init and run.global_rounds == 2
    assert [(s.stage_name, s.kind, s.rounds, s.strategy.name) for s in spec.stages] == [
        ("global", "global", 2, "fedavg"),
        ("head", "finetune", 1, "fedncm"),
        ("finetune", "finetune", 10, "fedprox"),
    ]


def test_baselines_take_no_ncm_prefix() -> None:
    from fedtune.errors import FedtuneError

    with pytest.raises(FedtuneError, match="no ncm\\+ head round"):
        parse_configs("ncm+centralized")


def test_ffa_lora_method_is_the_bench_lora_with_a_frozen() -> None:
    config = _config(methods=parse_methods("lora,ffa_lora"))

    lora = experiment_spec(config, LABELS, "lora", parse_configs("fedavg")[0]).peft
    ffa = experiment_spec(config, LABELS, "ffa_lora", parse_configs("fedavg")[0]).peft

    assert ffa.freeze_a and not lora.freeze_a
    assert ffa.model_dump(exclude={"freeze_a"}) == lora.model_dump(exclude={"freeze_a"})


def test_dp_noise_multiplier_puts_record_level_dp_into_the_spec() -> None:
    assert experiment_spec(_config(), ["a", "b"], "lora", parse_configs("fedprox")[0]).privacy.dp is None
    config = _config(configs=parse_configs("fedprox:mu=0.01"), dp_noise_multiplier=1.4)
    dp = experiment_spec(config, ["a", "b"], "lora", config.configs[0]).privacy.dp
    assert dp is not None and dp.level == "record" and dp.noise_multiplier == 1.4 and dp.clip_norm == 1.0
    assert dp.delta == 1e-5


def test_privacy_option_puts_secure_aggregation_into_the_spec_and_refuses_a_bare_word() -> None:
    from bench.config import parse_privacy
    from fedtune.errors import FedtuneError

    config = _config(
        configs=parse_configs("fedprox:mu=0.01"), privacy=parse_privacy("secure_aggregation=true")
    )
    spec = experiment_spec(config, ["a", "b", "c"], "lora", config.configs[0])
    assert spec.privacy.secure_aggregation is True
    assert (
        experiment_spec(
            _config(), ["a", "b", "c"], "lora", parse_configs("fedprox")[0]
        ).privacy.secure_aggregation
        is False
    )
    with pytest.raises(
        FedtuneError, match="--privacy 'secure_aggregation': 'secure_aggregation' is not key=value"
    ):
        parse_privacy("secure_aggregation")
