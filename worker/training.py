"""Local training: a plain PyTorch loop (AdamW), FedProx, and client-side DP.

Every round starts a fresh optimiser from the global weights. The learning rate follows
`training.lr_schedule` over the whole federation (worker/schedule.py; constant by default), with
gradient accumulation, gradient-norm clipping and gradient checkpointing when the spec asks.
Data order is seeded by (training.seed, round, site) so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from fedtune.dp_mechanism import clip_and_noise, secure_rng
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import PrivacySpec, TrainingSpec
from worker import interrupt, schedule
from worker.batches import encode_batch
from worker.data import Example
from worker.device import DeviceChoice
from worker.instruction import scored_tokens
from worker.logit_adjustment import adjusted_cross_entropy, site_log_prior
from worker.loss_check import check_finite_loss
from worker.model import load_trainable_arrays, trainable_arrays
from worker.privacy import site_level_update
from worker.ranks import RankGroup
from worker.shard_step import accumulate_shard

PROGRESS_EVERY = 10


@dataclass(frozen=True)
class TrainResult:
    train_loss: float  # mean over steps of the batch loss
    num_examples: int  # size of the training set (the FedAvg weight)
    steps: int
    seconds: float
    examples_per_second: float

    def metrics(self) -> dict[str, float]:
        """The figures a site reports for its local training."""
        return {
            "train_loss": self.train_loss,
            "train_seconds": self.seconds,
            "train_steps": float(self.steps),
            "examples_per_second": self.examples_per_second,
        }


def total_steps(num_examples: int, training: TrainingSpec) -> int:
    """Optimiser steps of one local training run (each of batch_size * gradient_accumulation_steps)."""
    if training.max_steps is not None:
        return training.max_steps
    per_step = training.batch_size * training.gradient_accumulation_steps
    return max(1, math.ceil(training.epochs * num_examples / per_step))


def _batch_order(
    num_examples: int, batch_size: int, steps: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """`steps` index batches drawn from a fresh permutation per pass over the data."""
    pending = np.empty(0, dtype=np.int64)
    for _ in range(steps):
        while len(pending) < batch_size:
            pending = np.concatenate([pending, rng.permutation(num_examples)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def data_rng(seed: int, round: int, site: str) -> np.random.Generator:
    return np.random.default_rng([seed, round, zlib.crc32(site.encode())])


class _AdjustedLoss:
    """Logit-adjusted CE with the site's label prior; the class count comes from the first logits."""

    def __init__(self, examples: Sequence[Example], tau: float) -> None:
        self.label_ids = [int(ex.label) for ex in examples if ex.label is not None]
        self.tau = tau
        self.log_prior: torch.Tensor | None = None

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        if self.log_prior is None:
            self.log_prior = site_log_prior(self.label_ids, int(logits.shape[-1]))
        return adjusted_cross_entropy(logits, batch["labels"], self.log_prior, self.tau)


def train(
    model: torch.nn.Module,
    tokenizer: object,
    examples: Sequence[Any],
    *,
    task: str,
    training: TrainingSpec,
    device: DeviceChoice,
    round: int = 0,
    rounds: int = 1,
    site: str = "",
    progress: Callable[[str], None] = print,
    encode: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None,
    ranks: RankGroup | None = None,
) -> TrainResult:
    """Train the model's trainable parameters in place, starting from their current (global) values.

    `encode` turns a list of examples into a model batch (default: `encode_batch` for `task`, which needs
    `Example`s); the global stage passes its LM encoder (worker/lm.py), the instruction task its collator
    (worker/instruction.py). With `training.logit_adjustment` > 0 and classification batches (no custom
    `encode`), the loss is the logit-adjusted CE with the prior of `examples`
    (worker/logit_adjustment.py); the reported train_loss is that adjusted loss.

    One step takes `gradient_accumulation_steps` micro-batches of `batch_size`; a language-model step's
    loss is the mean over all the step's scored tokens (transformers' `num_items_in_batch`), a
    classification step's the mean over its examples. `round` of the stage's planned `rounds` places the
    step on the federation's learning-rate schedule (worker/schedule.py).

    With `ranks` (a joined process group of several, worker/ranks.py), this process trains its shard of
    every step's examples in DDP; the figures returned are the whole group's.
    """
    if not examples:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if training.proximal_mu > 0 else []
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    steps = total_steps(len(examples), training)
    lr_schedule = schedule.scheduler(optimizer, training, steps, round, rounds)
    scaler = torch.amp.GradScaler(device.device.type, enabled=device.train_dtype == torch.float16)
    accumulation = training.gradient_accumulation_steps
    rng = data_rng(training.seed, round, site)
    torch.manual_seed(int(rng.integers(2**31)))  # dropout masks
    adjusted = (
        _AdjustedLoss(examples, training.logit_adjustment)
        if training.logit_adjustment > 0 and task == "sequence-classification" and encode is None
        else None
    )

    def batch_of(indices: np.ndarray) -> dict[str, torch.Tensor]:
        chosen = [examples[i] for i in indices]
        if encode is not None:
            return encode(chosen)
        return encode_batch(tokenizer, chosen, task, training.max_length, device.device)

    group = ranks if ranks is not None and ranks.distributed else None
    forward = group.wrap(model, device.device) if group is not None else model
    model.train()
    loss_sum, seen, started = 0.0, 0, time.perf_counter()
    step_size = training.batch_size * accumulation
    try:
        with checkpointing(model, training.gradient_checkpointing):
            for step, indices in enumerate(_batch_order(len(examples), step_size, steps, rng), start=1):
                interrupt.check()  # a SIGTERM or a cancelled task ends training within one step
                if group is not None:
                    step_loss = accumulate_shard(
                        forward, group, indices, batch_of, task, adjusted, params, anchors, training,
                        device, scaler, step,
                    )  # fmt: skip
                else:
                    micro = [
                        batch_of(indices[i : i + training.batch_size])
                        for i in range(0, step_size, training.batch_size)
                    ]
                    step_loss = _accumulate(
                        model, micro, task, adjusted, params, anchors, training, device, scaler, step
                    )
                if training.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr_schedule.step()
                loss_sum += step_loss
                seen += len(indices)
                if step % PROGRESS_EVERY == 0 or step == steps:
                    shown = group.sum(loss_sum, device.device) if group is not None else loss_sum
                    rate = seen / max(time.perf_counter() - started, 1e-9)
                    progress(f"step {step}/{steps} loss {shown / step:.4f} {rate:.1f} examples/s")
    finally:
        model.eval()
    if group is not None:  # each rank holds its share of every step's loss
        loss_sum = group.sum(loss_sum, device.device)
    seconds = time.perf_counter() - started
    return TrainResult(
        train_loss=loss_sum / steps,
        num_examples=len(examples),
        steps=steps,
        seconds=seconds,
        examples_per_second=seen / max(seconds, 1e-9),
    )


def _accumulate(
    model: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    task: str,
    adjusted: _AdjustedLoss | None,
    params: list[torch.nn.Parameter],
    anchors: list[torch.Tensor],
    training: TrainingSpec,
    device: DeviceChoice,
    scaler: torch.amp.GradScaler,
    step: int,
) -> float:
    """Forward and backward every micro-batch of one step; returns the step's loss (without FedProx)."""
    count = len(micro_batches)
    language_model = task != "sequence-classification"
    tokens = sum(scored_tokens(b) for b in micro_batches) if language_model and count > 1 else 0
    step_loss = 0.0
    for batch in micro_batches:
        with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
            if adjusted is not None:
                loss = adjusted(model, batch) / count
            elif tokens:  # the mean over the whole step's tokens, not a mean of micro-batch means
                loss = model(**batch, num_items_in_batch=tokens).loss.float()
            else:
                loss = model(**batch).loss.float() / count
        objective = loss
        if anchors:
            drift = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
            objective = loss + 0.5 * training.proximal_mu * drift / count
        check_finite_loss(objective, step)
        scaler.scale(objective).backward()  # type: ignore[no-untyped-call]
        step_loss += float(loss.detach())
    return step_loss


@contextlib.contextmanager
def checkpointing(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing for the duration of a training run (`training.gradient_checkpointing`):
    each layer keeps only its inputs and recomputes the rest in the backward pass (non-reentrant
    torch.utils.checkpoint), for about a third more compute."""
    if not enabled:
        yield
        return
    base: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"training.gradient_checkpointing: {type(base).__name__} does not support gradient "
            "checkpointing; set it to false",
        )
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        disable = base.activation_checkpointing_disable
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        disable = base.gradient_checkpointing_disable
    try:
        yield
    finally:
        disable()


def privatize_update(
    trained: dict[str, np.ndarray],
    global_arrays: dict[str, np.ndarray],
    privacy: PrivacySpec,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Clip the update (trained - global) to `clip_norm` in L2 and add N(0, (noise_multiplier*clip_norm)^2).

    Returns the privatized weights (global + noisy clipped delta) and metrics: the update norm before
    clipping and whether it was clipped, but only when no noise is added (clipping alone, to tune
    clip_norm): with noise these exact, un-noised figures would leak past it. Off (identity) when
    `clip_norm` is unset. (Accounted DP, `privacy.dp`, is worker/privacy.py.)
    """
    if privacy.clip_norm is None:
        if privacy.noise_multiplier > 0:
            raise FedtuneError(ErrorCode.INVALID_SPEC, "privacy.noise_multiplier needs privacy.clip_norm")
        return trained, {}
    sigma = privacy.noise_multiplier * privacy.clip_norm
    deltas = {name: trained[name].astype(np.float64) - global_arrays[name] for name in trained}
    noisy, norm = clip_and_noise(deltas, privacy.clip_norm, sigma, rng or secure_rng())
    out = {name: (global_arrays[name] + noisy[name]).astype(np.float32) for name in noisy}
    if sigma > 0:
        return out, {}
    return out, {"update_norm": norm, "update_clipped": float(norm > privacy.clip_norm)}


def update_to_send(
    model: PeftModel,
    global_arrays: dict[str, np.ndarray],
    privacy: PrivacySpec,
    sites_in_round: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The trained tensors as they leave the site (clipped and noised when `privacy` asks), plus the
    privacy metrics; a privatized update is loaded back into `model`, so an evaluation that follows
    measures what is actually sent. Site-level `privacy.dp` clips (and, with secure aggregation, adds
    this site's share of the noise for a round of `sites_in_round` sites: worker/privacy.py); record
    level sends the DP-SGD result as trained."""
    if privacy.dp is not None:
        if privacy.dp.level == "record":
            return trainable_arrays(model), {}
        arrays = site_level_update(
            trainable_arrays(model), global_arrays, privacy.dp, privacy.secure_aggregation, sites_in_round
        )
        load_trainable_arrays(model, arrays)
        return arrays, {}
    arrays, privacy_metrics = privatize_update(trainable_arrays(model), global_arrays, privacy)
    if privacy.clip_norm is not None:
        load_trainable_arrays(model, arrays)
    return arrays, privacy_metrics
