"""The experiment spec: YAML in, validated pydantic models out. Shared by coordinator and worker.

A bad field gives a ``FedtuneError(INVALID_SPEC)`` whose message names the field's path,
e.g. ``stages.0.rounds: Input should be greater than or equal to 1``.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from fedtune.errors import ErrorCode, FedtuneError

# Sane ranges: a value outside them is a typo or an attack, never a setting (docs/decisions.md 25).
MAX_SEED = 2**32 - 1  # numpy and torch seeds
MAX_DEADLINE_SECONDS = 30 * 24 * 3600.0  # one round may last at most 30 days
MAX_NAME_CHARS = 200  # experiment, model and label names (experiments.name is String(200))
MAX_STAGE_NAME_CHARS = 100  # stages.name and model_versions.stage_name are String(100)
MAX_OPTION_ABS = 1e12  # a number in strategy options
MAX_NESTING = 8  # dicts / lists in strategy options
MAX_ITEMS = 10_000  # entries of one list or dict anywhere in the spec
MAX_ACCUMULATION_STEPS = 4096  # micro-batches per optimiser step


class _Strict(BaseModel):
    # inf / nan in any float field is refused: an infinite deadline never closes a round, and the
    # stored JSON (inf -> null) would no longer load
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_SITE_PATH_CHARS = 1024  # a data file or model folder name, relative to the site's root


def site_path_problem(name: str) -> str | None:
    """Why `name` cannot name a file inside a site's root folder, or None if it can (decision 24).

    Allowed: a relative path such as ``train.jsonl`` or ``2024/train.jsonl``. Refused: absolute paths
    (``/etc/passwd``, ``C:\\x``, ``\\\\host\\share``), any ``..`` component, NUL and other control
    characters, and more than MAX_SITE_PATH_CHARS characters. Workers check again when they open the
    file, and also refuse a symlink that leads out of the data root.
    """
    if not name:
        return "must not be empty"
    if len(name) > MAX_SITE_PATH_CHARS:
        return f"is longer than {MAX_SITE_PATH_CHARS} characters; use a shorter relative path"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains a NUL or control character"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        return "must be a path relative to the site's root folder, not an absolute path"
    if ".." in PureWindowsPath(name).parts:  # splits on both / and \\
        return "must not contain '..': it has to stay inside the site's root folder"
    return None


def _site_path(name: str | None) -> str | None:
    if name is not None and (problem := site_path_problem(name)) is not None:
        raise ValueError(problem)
    return name


class BaseModelSpec(_Strict):
    """The foundation model. Each site loads it from ``<model_root>/<name>`` (no hub access)."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    sha256: str | None = None  # optional digest of the weights file, checked by workers
    # Precision of the frozen base weights and of the forward pass (trained tensors stay float32).
    # auto: bf16 on a CUDA GPU that supports it, else float32. fp16 and quantization need CUDA.
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # QLoRA: the frozen base in 4-bit NF4 or 8-bit through bitsandbytes, prepared with peft's
    # prepare_model_for_kbit_training. A site without CUDA (or bitsandbytes) refuses the task.
    quantization: Literal["none", "nf4", "int8"] = "none"

    _name_inside_model_root = field_validator("name")(_site_path)


class DataSpec(_Strict):
    """Site-local data files, relative to each worker's ``--data-root``. JSONL or CSV."""

    train: str = "train.jsonl"
    eval: str | None = "eval.jsonl"
    text_field: str = "text"
    label_field: str = "label"
    # Unlabelled text for a `global` stage (masked/causal LM); defaults to the train file's text.
    unlabelled: str | None = None

    _inside_data_root = field_validator("train", "eval", "unlabelled")(_site_path)


class LoraSpec(_Strict):
    method: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0, le=10_000)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # None = peft's default for the architecture
    # FFA-LoRA: freeze A at the shared init seed and train only B; averaging is then exact.
    freeze_a: bool = False
    # DoRA (Liu et al. 2024): a trained magnitude vector per adapted layer, exchanged like A and B.
    use_dora: bool = False
    # rsLoRA (Kalajdzievski 2023): scale alpha / sqrt(r) instead of alpha / r, stable at large ranks.
    use_rslora: bool = False
    # Heterogeneous ranks (docs/decisions.md 37): site name -> the rank that site trains (1..r; sites not
    # listed train r). The global adapter keeps rank r; a site trains its top r_i components and sends
    # them zero-padded. Needs strategy hetero_lora (or freeze_a, where FedAvg of padded B is exact).
    site_ranks: dict[str, StrictInt] | None = None

    @model_validator(mode="after")
    def _check_site_ranks(self) -> LoraSpec:
        for site, rank in (self.site_ranks or {}).items():
            if not site or len(site) > MAX_NAME_CHARS:
                raise ValueError(f"site_ranks: site name {site!r} must have 1..{MAX_NAME_CHARS} characters")
            if isinstance(rank, bool) or not 1 <= rank <= self.r:
                raise ValueError(
                    f"site_ranks.{site}: rank {rank} must be a whole number in 1..{self.r} (peft.r, the "
                    "global rank); raise peft.r or lower the site's rank"
                )
        return self


class PromptTuningSpec(_Strict):
    method: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(default=20, ge=1, le=1000)
    # sample_vocab: each virtual token starts as a random vocabulary token's embedding (the scale the
    # model was trained on); random: peft's N(0, 1), ~20x the word-embedding scale of BERT-like models,
    # which swamps the real tokens. init_text, when set, wins over both.
    init: Literal["sample_vocab", "random"] = "sample_vocab"
    init_text: str | None = None


class PrefixTuningSpec(_Strict):
    method: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(default=20, ge=1, le=1000)


class Ia3Spec(_Strict):
    method: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None


class GenerateSpec(_Strict):
    """Greedy generation on the held-out split (instruction task): exact match and ROUGE-L per site.

    The prompt is each held-out conversation up to its last assistant turn, rendered by the chat
    template with the generation prompt; the reference is that turn's content (worker/generation.py).
    """

    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    examples: int = Field(default=32, ge=1, le=10_000)  # the first N held-out examples, in file order
    batch_size: int = Field(default=8, ge=1, le=1024)  # prompts decoded together (left-padded)


class EvaluationSpec(_Strict):
    """What a site measures on its held-out split besides the loss (and perplexity)."""

    generate: GenerateSpec | None = None


PeftSpec = Annotated[LoraSpec | PromptTuningSpec | PrefixTuningSpec | Ia3Spec, Field(discriminator="method")]


class TrainingSpec(_Strict):
    """Local training settings, applied at every site."""

    epochs: float = Field(default=1.0, gt=0, le=10_000)
    max_steps: int | None = Field(default=None, ge=1, le=10**8)  # overrides epochs when set
    batch_size: int = Field(default=16, ge=1, le=65_536)
    learning_rate: float = Field(default=5e-4, gt=0, le=100)
    weight_decay: float = Field(default=0.0, ge=0, le=100)
    max_length: int = Field(default=128, ge=8, le=8192)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    # FedProx proximal term (0 = off); set by the fedprox strategy or here.
    proximal_mu: float = Field(default=0.0, ge=0, le=10_000)
    # Logit adjustment tau for label-skewed sites (0 = off, 1.0 the standard value; classification only):
    # local training minimises CE(logits + tau * log(site label prior)), evaluation uses raw logits.
    # Removes each site's class prior from what the shared model learns (Menon et al. 2021; FedLC).
    logit_adjustment: float = Field(default=0.0, ge=0, le=100)
    # Set by the fedncm strategy (docs/decisions.md 19), not by hand: the site does not train but sends
    # per-class sums of the input features of this classifier layer, and the class counts, in that
    # layer's weight and bias tensors (classification only).
    class_statistics: str | None = Field(default=None, min_length=1)
    # Scale levers for large models (docs/decisions.md 34). `batch_size` is the micro-batch; one
    # optimiser step takes gradient_accumulation_steps micro-batches, and max_steps counts optimiser steps.
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=MAX_ACCUMULATION_STEPS)
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = Field(default=None, gt=0, le=1e6)  # clip the gradient's L2 norm
    # Learning-rate schedule over the whole federation: the step of round r, local step s is
    # (r - 1) * local_steps + s of rounds * local_steps (the stage's planned rounds), warmup included.
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    # instruction task: concatenate each micro-batch into one row with per-example positions (no
    # padding, attention kept within each example: transformers' DataCollatorWithFlattening).
    packing: bool = False


class SelectionSpec(_Strict):
    """Which sites take part in a round."""

    mode: Literal["all", "fraction"] = "all"
    fraction: float = Field(default=1.0, gt=0, le=1)
    min_sites: int = Field(default=1, ge=1, le=100_000)
    # Restrict to these site names (default: every registered site that is online).
    sites: list[str] | None = None


class StrategySpec(_Strict):
    """An aggregation strategy by registered name, with its options (validated by the coordinator)."""

    name: str = "fedavg"
    options: dict[str, Any] = Field(default_factory=dict)


# Strategies that combine each site's update on its own (a coordinate-wise median, a trimmed mean, a
# weighting by each site's distance): secure aggregation only ever shows the coordinator the sum, so
# they cannot run with it. The FedAvg and FedOpt families and fedprox need only the weighted sum.
# (Kept here, not on the coordinator's strategy classes, because the spec cannot import them;
# tests/secagg/test_strategy_sets.py checks them against the registry.)
STRATEGIES_NEEDING_SITE_UPDATES = frozenset({"median", "trimmed_mean", "fedavg_adaptive", "hetero_lora"})
# fedncm needs only a sum, but an unweighted sum of unclipped class statistics: not the masked
# weighted sum of clipped elements (decision 35).
STRATEGIES_REFUSED_WITH_SECURE_AGGREGATION = frozenset({"fedncm"})
SECURE_AGGREGATION_MIN_SITES = 3  # with 2, each site learns the other's update from the sum (secagg/graph.py)
MAX_SECAGG_NEIGHBOURS = 100_000


class SecAggSpec(_Strict):
    """Secure aggregation settings (fedtune/secagg; docs/privacy.md). Defaults suit LoRA updates."""

    # Each element of an update is clipped to [-clip_range, clip_range] before it is quantized.
    clip_range: float = Field(default=8.0, gt=0, le=1e6)
    # A site's weight (its example count) is capped at this (as in DP-FedAvg); the quantization error
    # grows with max_weight over the typical weight, so set it near the largest site's example count
    # (fedtune/secagg/quantize.py gives the error bound).
    max_weight: float = Field(default=10_000.0, gt=0, le=1e12)
    quantization_bits: Literal[32] = 32  # Z_2^32; 64 is a possible later extension
    # k and t: unset = the automatic rule of fedtune/secagg/graph.py, from the number of sites a round has.
    neighbours: int | None = Field(default=None, ge=2, le=MAX_SECAGG_NEIGHBOURS)
    threshold: int | None = Field(default=None, ge=2, le=MAX_SECAGG_NEIGHBOURS)

    @model_validator(mode="after")
    def _check(self) -> SecAggSpec:
        if self.neighbours is not None and self.threshold is not None:
            low = self.neighbours // 2 + 1
            if not low <= self.threshold <= self.neighbours:
                raise ValueError(
                    f"secagg.threshold {self.threshold} must be in [{low}, {self.neighbours}] for "
                    f"{self.neighbours} neighbours (more than half of them); leave both unset for the "
                    "automatic choice"
                )
        return self


class DpSpec(_Strict):
    """Differential privacy with an accountant (fedtune/privacy_accounting.py; docs/privacy.md).

    site: DP-FedAvg (McMahan et al. 2018). Each site clips its whole update (trained - global) to
    `clip_norm` in L2 at the worker; the sum of the round's updates, each weighted 1 (uniform weights
    bound one site's influence), gets Gaussian noise N(0, (noise_multiplier * clip_norm)^2), added by
    the coordinator (or split across the sites with secure aggregation: worker/privacy.py).
    record: DP-SGD (Abadi et al. 2016) with Opacus on the trainable parameters at each site: each
    record's gradient is clipped to `clip_norm`, batches are Poisson samples of rate batch_size / N.
    """

    level: Literal["site", "record"] = "site"
    noise_multiplier: float = Field(gt=0, le=1000)
    clip_norm: float = Field(gt=0, le=1e6)
    # A budget: the coordinator opens no round that would take epsilon past it, and ends the experiment.
    target_epsilon: float | None = Field(default=None, gt=0, le=1000)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "pld"] = "rdp"


class PrivacySpec(_Strict):
    """Privacy settings; all off by default. See docs/privacy.md for what each protects against."""

    # Client-side clip + Gaussian noise on each update (no accountant): works today.
    clip_norm: float | None = Field(default=None, gt=0, le=1e6)
    noise_multiplier: float = Field(default=0.0, ge=0, le=1000)
    # Secure aggregation (SecAgg+): the coordinator sees only the sum of the sites' updates
    # (fedtune/secagg, coordinator/secagg; docs/privacy.md).
    secure_aggregation: bool = False
    secagg: SecAggSpec = Field(default_factory=SecAggSpec)
    # Accounted DP (site or record level) with a budget (docs/privacy.md, decision 36).
    dp: DpSpec | None = None
    # What a site does with the loss / accuracy it reports: send them, withhold them, or add Laplace
    # noise of a documented scale (worker/privacy.py `report_metrics`; docs/privacy.md).
    report_metrics: Literal["send", "withhold", "noise"] = "send"

    @model_validator(mode="after")
    def _check(self) -> PrivacySpec:
        if self.secagg != SecAggSpec() and not self.secure_aggregation:  # (the stored JSON has defaults)
            raise ValueError(
                "secagg settings are given but secure_aggregation is false; set it true or remove them"
            )
        if self.dp is not None and (self.clip_norm is not None or self.noise_multiplier > 0):
            raise ValueError(
                "privacy.dp replaces privacy.clip_norm / noise_multiplier (client-side noise without an "
                "accountant); use one of them, not both"
            )
        return self


def _check_secure_aggregation(spec: ExperimentSpec) -> None:
    """Secure aggregation shows the coordinator only the sum: strategies that need each site's update
    cannot run with it, and a stage must be able to have SECURE_AGGREGATION_MIN_SITES sites."""
    for index, stage in enumerate(spec.stages):
        name = stage.strategy.name
        if name in STRATEGIES_NEEDING_SITE_UPDATES:
            raise ValueError(
                f"stages.{index}.strategy.name: {name} needs each site's own update, which "
                "privacy.secure_aggregation hides from the coordinator (it sees only the sum); use a "
                "strategy that needs only the weighted sum (fedavg, fedprox, fedavgm, fedadagrad, fedadam, "
                "fedyogi) or turn secure_aggregation off"
            )
        if name in STRATEGIES_REFUSED_WITH_SECURE_AGGREGATION:
            raise ValueError(
                f"stages.{index}.strategy.name: {name} cannot run with privacy.secure_aggregation: its "
                "update is per-class feature sums and class counts, added up unweighted, whose magnitude "
                "grows with a site's example count (thousands), while the masked sum clips every element "
                "to secagg.clip_range and weights it by the site's example count; use it in a stage "
                "without secure aggregation, or another strategy"
            )
        # A round with fewer sites cannot be secure; the round protocol treats min_sites as at least
        # SECURE_AGGREGATION_MIN_SITES. A stage that lists fewer sites could never run: refused here.
        listed = stage.selection.sites
        if listed is not None and len(listed) < SECURE_AGGREGATION_MIN_SITES:
            raise ValueError(
                f"stages.{index}.selection.sites: secure aggregation needs at least "
                f"{SECURE_AGGREGATION_MIN_SITES} sites in a round (with fewer, a site learns the others' "
                f"updates from the sum); list {SECURE_AGGREGATION_MIN_SITES} or more"
            )


# Record-level DP-SGD (worker/dp_sgd.py) computes per-example gradients with Opacus; these are the
# settings it can honour (docs/privacy.md). Anything else is refused, naming the field.
RECORD_DP_TASKS = ("sequence-classification",)
RECORD_DP_PEFT_METHODS = ("lora",)


def _record_dp_problem(spec: ExperimentSpec) -> str | None:
    """Why record-level DP cannot run with `spec`, or None."""
    if spec.task not in RECORD_DP_TASKS:
        return (
            f"privacy.dp.level: record needs task {' or '.join(RECORD_DP_TASKS)}, not {spec.task} (a "
            "language-model loss averages tokens across the batch, so one record's clipped gradient "
            "would depend on the others); use level site"
        )
    if spec.peft.method not in RECORD_DP_PEFT_METHODS or getattr(spec.peft, "use_dora", False):
        return (
            f"privacy.dp.level: record supports peft method {' or '.join(RECORD_DP_PEFT_METHODS)} "
            "without DoRA (per-example gradients of its layers); change peft or use level site"
        )
    trainings = [("training", spec.training)] + [
        (f"stages.{i}.training", stage.training)
        for i, stage in enumerate(spec.stages)
        if stage.training is not None
    ]
    for where, training in trainings:
        if training.gradient_accumulation_steps != 1:
            return (
                f"{where}.gradient_accumulation_steps must be 1 with privacy.dp.level record (each "
                "DP-SGD step is one Poisson-sampled batch); raise batch_size instead"
            )
        if training.gradient_checkpointing:
            return f"{where}.gradient_checkpointing is not supported with privacy.dp.level record; set false"
        if training.max_grad_norm is not None:
            return (
                f"{where}.max_grad_norm: privacy.dp.clip_norm clips each record's gradient under "
                "record-level DP; remove max_grad_norm"
            )
        if training.logit_adjustment > 0:
            return (
                f"{where}.logit_adjustment uses the site's label prior, a figure of all its records, "
                "inside each record's loss; set it to 0 with privacy.dp.level record"
            )
    for index, stage in enumerate(spec.stages):
        if stage.kind == "global":
            return (
                f"stages.{index}.kind: a global stage trains a language model, which record-level DP "
                "does not cover; use privacy.dp.level site or remove the global stage"
            )
    return None


def _dp_problem(spec: ExperimentSpec) -> str | None:
    """What is wrong with `privacy.dp` for `spec` as a whole, or None (decision 36)."""
    dp = spec.privacy.dp
    if dp is None:
        return None
    if dp.level == "record":
        return _record_dp_problem(spec)
    for index, stage in enumerate(spec.stages):
        if stage.kind != "personalize" and stage.strategy.name in STRATEGIES_NEEDING_SITE_UPDATES:
            return (
                f"stages.{index}.strategy.name: {stage.strategy.name} combines each site's own update, "
                "which site-level DP's noise on the sum does not cover; use a weighted-mean strategy "
                "(fedavg, fedprox, fedavgm, fedadagrad, fedadam, fedyogi) or privacy.dp.level record"
            )
    return None


MAX_INT8_BLOCK_SIZE = 1 << 24  # = fedtune.compression.encoding.MAX_INT8_BLOCK_SIZE
DEFAULT_INT8_BLOCK_SIZE = 256


class TransportSpec(_Strict):
    """How sites encode the updates they upload (docs/decisions.md 40; docs/protocol.md section 5).

    fp32 (the default) sends the trained tensors as they are. bf16 and int8 send each tensor's delta
    from the round's model version, in bfloat16 or in int8 with one float32 scale per
    `int8_block_size` elements (0: one per tensor). `topk_fraction` sends only that fraction of each
    tensor's delta entries (largest magnitude first), as indices + values in `update_encoding`;
    `error_feedback` keeps what a site left out (or rounded away) and adds it to its next update.
    Downloads of the global model stay fp32. Class-statistics (fedncm) rounds always send fp32.
    """

    update_encoding: Literal["fp32", "bf16", "int8"] = "fp32"
    int8_block_size: int = Field(default=DEFAULT_INT8_BLOCK_SIZE, ge=0, le=MAX_INT8_BLOCK_SIZE)
    topk_fraction: float | None = Field(default=None, gt=0, lt=1)
    # Default: on with topk_fraction, off otherwise (the site keeps its residual in its work folder).
    error_feedback: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> TransportSpec:
        # (compared with the default, not fields_set: the stored JSON spells every default out)
        if self.int8_block_size != DEFAULT_INT8_BLOCK_SIZE and self.update_encoding != "int8":
            raise ValueError(
                f"transport.int8_block_size applies to update_encoding int8, not {self.update_encoding}; "
                "remove it or set update_encoding: int8"
            )
        if self.error_feedback and self.is_plain:
            raise ValueError(
                "transport.error_feedback needs a lossy encoding (update_encoding bf16 or int8, or "
                "topk_fraction): fp32 updates lose nothing to feed back; remove it"
            )
        return self

    @property
    def is_plain(self) -> bool:
        return self.update_encoding == "fp32" and self.topk_fraction is None

    @property
    def uses_error_feedback(self) -> bool:
        if self.error_feedback is not None:
            return self.error_feedback
        return self.topk_fraction is not None


class StageSpec(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=MAX_STAGE_NAME_CHARS)  # default: kind
    kind: Literal["global", "finetune", "personalize"]
    rounds: int = Field(default=1, ge=1, le=10_000)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    training: TrainingSpec | None = None  # overrides the experiment's training settings
    deadline_seconds: float = Field(default=3600.0, gt=0, le=MAX_DEADLINE_SECONDS)

    @property
    def stage_name(self) -> str:
        return self.name or self.kind


class ExperimentSpec(_Strict):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    base_model: BaseModelSpec
    # instruction: chat / prompt-response JSONL, loss on the assistant's tokens only (worker/instruction.py)
    task: Literal["sequence-classification", "causal-lm", "instruction"] = "sequence-classification"
    labels: list[str] | None = None  # class names, in label-id order (sequence classification)
    data: DataSpec = Field(default_factory=DataSpec)
    peft: PeftSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    transport: TransportSpec = Field(default_factory=TransportSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    stages: list[StageSpec] = Field(min_length=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    @model_validator(mode="before")
    @classmethod
    def _check_plain_values(cls, data: Any) -> Any:
        """No NUL / control characters in any string (the registry cannot store NUL), no inf / nan or
        huge numbers, bounded nesting and sizes, also inside free-form `strategy.options`."""
        _check_plain(data, "")
        return data

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        if self.task == "sequence-classification" and not self.labels:
            raise ValueError("sequence-classification needs `labels: [..]`, the class names in id order")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("`labels` has duplicates")
        if self.task != "sequence-classification":
            adjusted = ["training"] * (self.training.logit_adjustment > 0) + [
                f"stages.{i}.training"
                for i, stage in enumerate(self.stages)
                if stage.training is not None and stage.training.logit_adjustment > 0
            ]
            if adjusted:
                raise ValueError(
                    f"{', '.join(a + '.logit_adjustment' for a in adjusted)} > 0 needs task "
                    f"sequence-classification (it shifts class logits by the site's label prior), "
                    f"not {self.task}; set it to 0 or remove it"
                )
        problem = _scale_lever_problem(self) or _site_ranks_problem(self) or _evaluation_problem(self)
        if problem is not None:
            raise ValueError(problem)
        names = [s.stage_name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}; give repeated kinds a `name`")
        if self.privacy.secure_aggregation and not self.transport.is_plain:
            raise ValueError(
                "transport.update_encoding / transport.topk_fraction cannot be combined with "
                "privacy.secure_aggregation: a masked update is a uint32 vector in which every bit counts "
                "(quantized before masking, decision 40), so it cannot be compressed; use "
                "update_encoding: fp32 without topk_fraction, or turn secure_aggregation off"
            )
        if self.privacy.secure_aggregation:
            _check_secure_aggregation(self)
        problem = _dp_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    def training_for(self, stage_index: int) -> TrainingSpec:
        return self.stages[stage_index].training or self.training

    def to_json(self) -> str:
        return self.model_dump_json()


PACKABLE_METHODS = ("lora", "ia3")  # prompt-learning methods prepend tokens and drop position ids


def _scale_lever_problem(spec: ExperimentSpec) -> str | None:
    """What is wrong with the LLM scale levers of `spec` as a whole, or None."""
    trainings = [("training", spec.training)] + [
        (f"stages.{i}.training", stage.training)
        for i, stage in enumerate(spec.stages)
        if stage.training is not None
    ]
    for where, training in trainings:
        if training.packing and spec.task != "instruction":
            return f"{where}.packing needs task instruction, not {spec.task}; remove it"
        if training.packing and spec.peft.method not in PACKABLE_METHODS:
            return (
                f"{where}.packing works with peft methods {list(PACKABLE_METHODS)}, not "
                f"{spec.peft.method} (its virtual tokens ignore per-example positions); set it to false"
            )
    if spec.base_model.quantization != "none" and spec.base_model.dtype == "fp32":
        return (
            f"base_model.quantization {spec.base_model.quantization} computes in bf16 or fp16; "
            "set base_model.dtype to auto, bf16 or fp16"
        )
    return None


# Strategies that aggregate the products B_i A_i of a LoRA, so sites may train different ranks
# (fedtune/lora_ranks.py keeps the same set for the worker).
RANK_AWARE_STRATEGIES = frozenset({"hetero_lora"})


def _site_ranks_problem(spec: ExperimentSpec) -> str | None:
    """`peft.site_ranks` needs an aggregation that is right for padded factors of different ranks."""
    if not isinstance(spec.peft, LoraSpec) or not spec.peft.site_ranks or spec.peft.freeze_a:
        return None  # with freeze_a, A is shared: the mean of the zero-padded B is exact under any FedAvg
    for index, stage in enumerate(spec.stages):
        if stage.kind == "finetune" and stage.strategy.name not in RANK_AWARE_STRATEGIES:
            return (
                f"stages.{index}.strategy.name: peft.site_ranks gives sites different LoRA ranks, which "
                f"{stage.strategy.name} would average factor by factor (zero-padded A and B do not average "
                f"to the mean update); use strategy {sorted(RANK_AWARE_STRATEGIES)[0]} or peft.freeze_a: true"
            )
    return None


def _evaluation_problem(spec: ExperimentSpec) -> str | None:
    """What is wrong with `evaluation` for this task and data, or None."""
    if spec.evaluation.generate is None:
        return None
    if spec.task != "instruction":
        return (
            f"evaluation.generate needs task instruction (prompts and references come from its chat "
            f"examples), not {spec.task}; remove evaluation.generate"
        )
    if spec.data.eval is None:
        return "evaluation.generate needs data.eval, the held-out file it generates for; set data.eval"
    return None


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    here = where or "(spec)"
    if depth > MAX_NESTING + 4:  # the spec's own nesting plus MAX_NESTING inside options
        raise ValueError(f"{here}: nested deeper than {MAX_NESTING} levels")
    if isinstance(value, str):
        bad = next((c for c in value if (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127), None)
        if bad is not None:
            raise ValueError(f"{here}: holds the control character {bad!r}; remove it")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_OPTION_ABS:
            raise ValueError(
                f"{here}: {value} is not a finite number of magnitude at most {MAX_OPTION_ABS:g}"
            )
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 2**63 - 1:
            raise ValueError(f"{here}: {value} does not fit in 64 bits")
    elif isinstance(value, (dict, list, tuple)):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"{here}: has {len(value)} entries; the limit is {MAX_ITEMS}")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check_plain(key, here, depth + 1)
            _check_plain(item, f"{where}.{key}" if where else str(key), depth + 1)


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(spec)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_spec(data: dict[str, Any]) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise FedtuneError(ErrorCode.INVALID_SPEC, _format_validation_error(err)) from None


def load_spec_yaml(text: str) -> ExperimentSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise FedtuneError(ErrorCode.INVALID_SPEC, f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise FedtuneError(
            ErrorCode.INVALID_SPEC, "the spec must be a YAML mapping (name:, base_model:, stages: ...)"
        )
    return parse_spec(data)


def load_spec_json(text: str) -> ExperimentSpec:
    """The spec stored at submit time (``ExperimentSpec.to_json``); every accepted spec reloads."""
    try:
        return ExperimentSpec.model_validate_json(text)
    except ValidationError as err:
        raise FedtuneError(ErrorCode.INVALID_SPEC, _format_validation_error(err)) from None
