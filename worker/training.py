"""Local training: a plain PyTorch loop (AdamW, constant learning rate), FedProx, and client-side DP.

The learning rate is constant within a round: every round starts a fresh optimiser from the global
weights, and a per-round decay would make the effective step depend on the round's length rather
than on the spec. Data order is seeded by (training.seed, round, site) so a run is reproducible.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import PrivacySpec, TrainingSpec
from worker import interrupt
from worker.batches import encode_batch
from worker.data import Example
from worker.device import DeviceChoice
from worker.logit_adjustment import adjusted_cross_entropy, site_log_prior
from worker.model import load_trainable_arrays, trainable_arrays

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
    if training.max_steps is not None:
        return training.max_steps
    return max(1, math.ceil(training.epochs * num_examples / training.batch_size))


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
    examples: Sequence[Example],
    *,
    task: str,
    training: TrainingSpec,
    device: DeviceChoice,
    round: int = 0,
    site: str = "",
    progress: Callable[[str], None] = print,
    encode: Callable[[Sequence[Example]], dict[str, torch.Tensor]] | None = None,
) -> TrainResult:
    """Train the model's trainable parameters in place, starting from their current (global) values.

    `encode` turns a list of examples into a model batch (default: `encode_batch` for `task`); the
    global stage passes its LM encoder (worker/lm.py). With `training.logit_adjustment` > 0 and
    classification batches (no custom `encode`), the loss is the logit-adjusted CE with the prior of
    `examples` (worker/logit_adjustment.py); the reported train_loss is that adjusted loss.
    """
    if not examples:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if training.proximal_mu > 0 else []
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    steps = total_steps(len(examples), training)
    rng = data_rng(training.seed, round, site)
    torch.manual_seed(int(rng.integers(2**31)))  # dropout masks
    adjusted = (
        _AdjustedLoss(examples, training.logit_adjustment)
        if training.logit_adjustment > 0 and task == "sequence-classification" and encode is None
        else None
    )
    model.train()
    loss_sum, seen, started = 0.0, 0, time.perf_counter()
    for step, indices in enumerate(_batch_order(len(examples), training.batch_size, steps, rng), start=1):
        interrupt.check()  # a SIGTERM or a cancelled task ends training within one step
        chosen = [examples[i] for i in indices]
        if encode is not None:
            batch = encode(chosen)
        else:
            batch = encode_batch(tokenizer, chosen, task, training.max_length, device.device)
        with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
            loss = model(**batch).loss.float() if adjusted is None else adjusted(model, batch)
        objective = loss
        if anchors:
            drift = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
            objective = loss + 0.5 * training.proximal_mu * drift
        if not torch.isfinite(objective):
            raise FedtuneError(
                ErrorCode.NON_FINITE,
                f"training loss became {objective.item()} at step {step}; lower learning_rate",
            )
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        loss_sum += float(loss.detach())
        seen += len(indices)
        if step % PROGRESS_EVERY == 0 or step == steps:
            rate = seen / max(time.perf_counter() - started, 1e-9)
            progress(f"step {step}/{steps} loss {loss_sum / step:.4f} {rate:.1f} examples/s")
    model.eval()
    seconds = time.perf_counter() - started
    return TrainResult(
        train_loss=loss_sum / steps,
        num_examples=len(examples),
        steps=steps,
        seconds=seconds,
        examples_per_second=seen / max(seconds, 1e-9),
    )


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
    `clip_norm` is unset.
    """
    if privacy.clip_norm is None:
        if privacy.noise_multiplier > 0:
            raise FedtuneError(ErrorCode.INVALID_SPEC, "privacy.noise_multiplier needs privacy.clip_norm")
        return trained, {}
    rng = rng or np.random.default_rng()  # fresh OS entropy: DP noise must not be predictable
    deltas = {name: trained[name].astype(np.float64) - global_arrays[name] for name in trained}
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in deltas.values()))
    scale = min(1.0, privacy.clip_norm / max(norm, 1e-12))
    sigma = privacy.noise_multiplier * privacy.clip_norm
    out = {}
    for name, delta in deltas.items():
        noisy = delta * scale + (rng.normal(0.0, sigma, size=delta.shape) if sigma > 0 else 0.0)
        out[name] = (global_arrays[name] + noisy).astype(np.float32)
    if sigma > 0:
        return out, {}
    return out, {"update_norm": norm, "update_clipped": float(scale < 1.0)}


def update_to_send(
    model: PeftModel, global_arrays: dict[str, np.ndarray], privacy: PrivacySpec
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The trained tensors as they leave the site (clipped and noised when `privacy` asks), plus the
    privacy metrics; a privatized update is loaded back into `model`, so an evaluation that follows
    measures what is actually sent."""
    arrays, privacy_metrics = privatize_update(trainable_arrays(model), global_arrays, privacy)
    if privacy.clip_norm is not None:
        load_trainable_arrays(model, arrays)
    return arrays, privacy_metrics
