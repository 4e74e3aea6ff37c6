"""What a quality benchmark runs: the data split, the budget, and the list of configurations.

A configuration is `centralized`, `local-only`, or a registered aggregation strategy with options,
written ``name[:key=value[:key=value]]`` (values parsed as YAML), e.g. ``fedprox:mu=0.1``.
Every configuration runs once per PEFT method.

A federated configuration may start with ``ncm+`` (after any global prefix), e.g. ``ncm+fedavg``:
one ``fedncm`` round (docs/decisions.md 19) sets the classifier head to the pooled class means of its
input features before the finetune rounds; it trains nothing and is outside the budget rule.

A federated configuration may start with a ``global`` stage (docs/decisions.md 11): write
``global<G>+<strategy>[:key=value...]``, e.g. ``global2+fedavg`` or ``global3+fedprox:mu=0.1``.
The experiment then runs G global rounds (federated masked-LM LoRA on the sites' train text, always
aggregated with fedavg, with the same local steps and batch size; learning rate ``--learning-rate`` or
LoRA's 1e-3) before the usual finetune rounds with the named strategy; every site merges the global
LoRA into its base before the finetune stage. The global rounds are extra compute, outside the budget
rule below (which counts classification training only). Baselines take no global stage.

Budget rule (same examples seen, so the same gradient compute, in every configuration):
a federated run sees ``sites x rounds x local_steps x batch_size`` training examples in total;
centralized trains ``sites x rounds x local_steps`` steps of ``batch_size`` on the pooled train
data of all sites; local-only trains each site ``rounds x local_steps`` steps on its own data
(what that site computes during the federated run, without the exchange).

``logit_adjustment`` (tau, ``--logit-adjustment``) goes into the spec's training settings, so every
site of a federated run and every local-only site trains with logit-adjusted CE against its own label
prior; centralized trains on the pooled data (roughly balanced) with plain CE (see
`baselines.centralized`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, parse_spec

BASELINES = ("centralized", "local-only")
DEFAULT_CONFIGS = (
    "centralized,local-only,fedavg,fedprox,fedyogi,fedavg_adaptive,ncm+fedavg,ncm+fedprox:mu=0.01"
)
DEFAULT_METHODS = "lora,prompt_tuning"

# PEFT settings per method (the issue's: LoRA r=8 on MiniLM's attention + dense; 20 virtual tokens).
PEFT_BY_METHOD: dict[str, dict[str, Any]] = {
    "lora": {
        "method": "lora",
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ["query", "key", "value", "dense"],
    },
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 20},
    "ia3": {"method": "ia3"},
}
# FFA-LoRA (docs/decisions.md 15): the same LoRA with A frozen at the shared seed, so FedAvg of B is exact.
PEFT_BY_METHOD["ffa_lora"] = {**PEFT_BY_METHOD["lora"], "freeze_a": True}
# Prompt tuning trains only input embeddings + the head: it needs a larger step than LoRA.
LEARNING_RATE_BY_METHOD: dict[str, float] = {
    "lora": 1e-3,
    "ffa_lora": 1e-3,
    "prompt_tuning": 1e-2,
    "ia3": 3e-3,
}


class RunConfig(BaseModel):
    """One configuration: a baseline or a strategy with its options."""

    model_config = ConfigDict(frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    global_rounds: int = Field(0, ge=0)  # >0: a `global` stage of that many rounds before finetune
    head_init: bool = False  # True: one fedncm round (class-mean head) before the finetune rounds

    @property
    def is_baseline(self) -> bool:
        return self.name in BASELINES

    @property
    def label(self) -> str:
        prefix = f"global{self.global_rounds}+" if self.global_rounds else ""
        prefix += "ncm+" if self.head_init else ""
        if not self.options:
            return prefix + self.name
        return prefix + self.name + ":" + ":".join(f"{k}={v}" for k, v in sorted(self.options.items()))


DP_DELTA = 1e-5


class BenchConfig(BaseModel):
    """Everything that determines a benchmark's figures (written into the JSON output)."""

    model_config = ConfigDict(frozen=True)

    sites: int = Field(8, ge=1, le=26)
    alpha: float = Field(0.1, gt=0)
    rounds: int = Field(10, ge=1)
    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=8)
    learning_rate: float | None = Field(None, gt=0)  # None: LEARNING_RATE_BY_METHOD
    seed: int = 0
    # tau of logit-adjusted local training (docs/decisions.md 18): federated runs and local-only;
    # centralized trains on the pooled, roughly balanced data and keeps plain CE.
    logit_adjustment: float = Field(0.0, ge=0)
    # Record-level DP-SGD at every site (decision 36): the noise multiplier z (None: no DP) and each
    # record's gradient clip; the sites report their epsilon (delta DP_DELTA) in the run's metrics.
    dp_noise_multiplier: float | None = Field(None, gt=0)
    dp_clip_norm: float = Field(1.0, gt=0)
    configs: list[RunConfig]
    methods: list[str]
    model_dir: Path
    model_name: str
    corpus_dir: Path
    out_dir: Path
    quick: bool = False
    max_test_examples: int | None = None  # cap the held-out test set (--quick)
    timeout_seconds: float = 6 * 3600
    # the spec's `transport` for every federated run (decision 40), e.g. {"update_encoding": "int8"}
    transport: dict[str, Any] = Field(default_factory=dict)
    # more of the spec's `privacy` for every federated run, e.g. {"secure_aggregation": True} (decision 35)
    privacy: dict[str, Any] = Field(default_factory=dict)

    @property
    def federated(self) -> list[RunConfig]:
        return [c for c in self.configs if not c.is_baseline]

    def baseline_names(self) -> list[str]:
        return [c.name for c in self.configs if c.is_baseline]

    def budget(self) -> dict[str, int]:
        steps_per_site = self.rounds * self.local_steps
        return {
            "federated_examples_seen": self.sites * steps_per_site * self.batch_size,
            "centralized_steps": self.sites * steps_per_site,
            "local_only_steps_per_site": steps_per_site,
            "batch_size": self.batch_size,
        }


_GLOBAL_PREFIX = re.compile(r"^global(\d+)\+(.*)$")
HEAD_PREFIX = "ncm+"


def parse_configs(text: str) -> list[RunConfig]:
    """``fedavg,global2+fedprox:mu=0.1,centralized`` -> RunConfigs (the coordinator checks strategies)."""
    configs: list[RunConfig] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        global_rounds = 0
        rest = item
        if item.startswith("global"):
            match = _GLOBAL_PREFIX.match(item)
            if match is None or int(match.group(1)) < 1 or not match.group(2).strip():
                raise FedtuneError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"config {item!r}: a global stage is written global<rounds>+<strategy>, "
                    "rounds >= 1, e.g. global2+fedavg",
                )
            global_rounds, rest = int(match.group(1)), match.group(2).strip()
        head_init = rest.startswith(HEAD_PREFIX)
        rest = rest.removeprefix(HEAD_PREFIX).strip()
        name, *pairs = rest.split(":")
        options: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise FedtuneError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"config {item!r}: option {pair!r} is not key=value (e.g. fedprox:mu=0.1)",
                )
            options[key.strip()] = yaml.safe_load(value)
        if name in BASELINES and (options or global_rounds or head_init):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"baseline {name!r} takes no options, no global stage and no ncm+ head round",
            )
        configs.append(
            RunConfig(name=name.strip(), options=options, global_rounds=global_rounds, head_init=head_init)
        )
    if not configs:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, "--configs is empty; e.g. --configs centralized,fedavg"
        )
    labels = [c.label for c in configs]
    if len(set(labels)) != len(labels):
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"--configs has duplicates: {labels}")
    return configs


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in PEFT_BY_METHOD]
    if not methods or unknown:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"--methods {text!r}: use a comma-separated list of {sorted(PEFT_BY_METHOD)}",
        )
    return methods


def experiment_spec(
    config: BenchConfig, labels: list[str], method: str, run: RunConfig | None = None
) -> ExperimentSpec:
    """The experiment a configuration runs (baselines use its model, PEFT and training settings)."""
    strategy = {"name": run.name, "options": dict(run.options)} if run and not run.is_baseline else {}
    training = {
        "max_steps": config.local_steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate or LEARNING_RATE_BY_METHOD[method],
        "max_length": config.max_length,
        "seed": config.seed,
        "logit_adjustment": config.logit_adjustment,
    }
    selection = {"mode": "all", "min_sites": config.sites}
    stages: list[dict[str, Any]] = []
    if run is not None and run.global_rounds:
        stages.append(
            {
                "kind": "global",
                "rounds": run.global_rounds,
                "selection": selection,
                "strategy": {"name": "fedavg"},
                # the global stage trains a LoRA whatever the method: LoRA's learning rate
                "training": {
                    **training,
                    "learning_rate": config.learning_rate or LEARNING_RATE_BY_METHOD["lora"],
                    "logit_adjustment": 0.0,  # masked-LM text has no class prior
                },
                "deadline_seconds": 3600,
            }
        )
    if run is not None and run.head_init:
        stages.append(
            {
                "name": "head",
                "kind": "finetune",
                "rounds": 1,
                "selection": selection,
                "strategy": {"name": "fedncm"},
                "deadline_seconds": 3600,
            }
        )
    stages.append(
        {
            "kind": "finetune",
            "rounds": config.rounds,
            "selection": selection,
            "strategy": strategy or {"name": "fedavg"},
            "deadline_seconds": 3600,
        }
    )
    privacy: dict[str, Any] = {}
    if config.dp_noise_multiplier is not None:
        privacy["dp"] = {
            "level": "record",
            "noise_multiplier": config.dp_noise_multiplier,
            "clip_norm": config.dp_clip_norm,
            "delta": DP_DELTA,
        }
    privacy.update(config.privacy)
    data: dict[str, Any] = {
        "name": f"quality-{method}-{run.label if run else 'baseline'}".replace(":", "-").replace("+", "-"),
        "base_model": {"name": config.model_name},
        "task": "sequence-classification",
        "labels": labels,
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "text_field": "text", "label_field": "label"},
        "peft": PEFT_BY_METHOD[method],
        "training": training,
        "stages": stages,
        "seed": config.seed,
        "privacy": privacy,
    }
    if config.transport:
        data["transport"] = dict(config.transport)
    return parse_spec(data)


def parse_transport(text: str) -> dict[str, Any]:
    """``update_encoding=int8,topk_fraction=0.1`` -> the spec's transport mapping (values parsed as YAML)."""
    return _key_values(text, "--transport", "update_encoding=int8")


def parse_privacy(text: str) -> dict[str, Any]:
    """``secure_aggregation=true`` -> settings merged into the spec's privacy block (values as YAML)."""
    return _key_values(text, "--privacy", "secure_aggregation=true")


def _key_values(text: str, option: str, example: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"{option} {text!r}: {pair!r} is not key=value (e.g. {example})"
            )
        values[key.strip()] = yaml.safe_load(value)
    return values


def spec_yaml(spec: ExperimentSpec) -> str:
    return str(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
