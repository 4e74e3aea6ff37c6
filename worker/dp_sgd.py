"""Record-level DP: DP-SGD (Abadi et al. 2016) on the trainable (PEFT) parameters with Opacus.

Opacus' `GradSampleModule` computes each record's gradient of the trainable parameters (the frozen
base has no hooks), its `DPOptimizer` clips each to `dp.clip_norm`, sums, adds N(0, (z C)^2) and
divides by the expected batch size; the wrapped AdamW then steps. Batches are Poisson samples: each
record joins a step with probability q = batch_size / N, which is what the accountant assumes
(`PoissonSampled(q, Gaussian(z))` per step, fedtune/privacy_accounting.py). An empty sample still
takes a noised step. The sampling and the noise draw from OS entropy, not from the spec's seed, so a
DP run is not reproducible (a predictable sample or noise would void the guarantee).

FedProx: the proximal gradient mu (w - w_global) depends only on the weights and the global model,
not on any record, so it is added after the noise (post-processing keeps the guarantee).

The site reports dp_noise_multiplier, dp_sample_rate, dp_steps (what the coordinator's per-site ledger
composes over rounds) and dp_epsilon, this round's epsilon alone at dp.delta. The spec refuses what
this loop cannot honour (fedtune/spec.py `_record_dp_problem`).
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import DpSpec, TrainingSpec
from worker import interrupt, schedule
from worker.batches import encode_batch
from worker.device import DeviceChoice
from worker.loss_check import check_finite_loss
from worker.training import PROGRESS_EVERY, TrainResult, total_steps


def poisson_batches(num_examples: int, rate: float, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`steps` Poisson samples: each index joins each step independently with probability `rate`."""
    return [np.flatnonzero(rng.random(num_examples) < rate) for _ in range(steps)]


def _empty_grad_samples(params: list[torch.nn.Parameter]) -> None:
    """An empty Poisson sample: no record contributes, the step is noise only (as accounted)."""
    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]


def dp_metrics(dp: DpSpec, sample_rate: float, steps: int) -> dict[str, float]:
    """What the coordinator's ledger needs from a site's DP-SGD run, and this run's epsilon."""
    from fedtune.privacy_accounting import dp_epsilon  # scipy & co: loaded by DP runs only

    return {
        "dp_noise_multiplier": dp.noise_multiplier,
        "dp_sample_rate": sample_rate,
        "dp_steps": float(steps),
        "dp_epsilon": dp_epsilon(dp.noise_multiplier, sample_rate, steps, dp.delta, dp.accountant),
    }


def train_dp_sgd(
    model: torch.nn.Module,
    tokenizer: object,
    examples: Sequence[Any],
    *,
    task: str,
    training: TrainingSpec,
    dp: DpSpec,
    device: DeviceChoice,
    round: int = 0,
    rounds: int = 1,
    progress: Callable[[str], None] = print,
) -> tuple[TrainResult, dict[str, float]]:
    """DP-SGD on the model's trainable parameters in place; the result and the DP accounting figures."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if not examples:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "no training examples")
    if device.train_dtype == torch.float16:
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            "privacy.dp.level record does not run with fp16 loss scaling; use base_model.dtype bf16 or fp32",
        )
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if training.proximal_mu > 0 else []
    count = len(examples)
    rate = min(1.0, training.batch_size / count)
    steps = total_steps(count, training)
    figures = dp_metrics(dp, rate, steps)  # known before training: refuse a run that alone passes the budget
    if dp.target_epsilon is not None and figures["dp_epsilon"] > dp.target_epsilon:
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"privacy.dp.target_epsilon {dp.target_epsilon}: one round here ({steps} DP-SGD steps at "
            f"sampling rate {rate:.4g}) would spend epsilon {figures['dp_epsilon']:.3f} on its own; raise "
            "privacy.dp.noise_multiplier or lower training.max_steps / epochs",
        )
    seed = secrets.randbits(63)
    rng = np.random.default_rng(seed)
    noise = torch.Generator(device=device.device).manual_seed(secrets.randbits(63))
    torch.manual_seed(seed % 2**31)  # dropout masks
    base_optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    lr_schedule = schedule.scheduler(base_optimizer, training, steps, round, rounds)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
    optimizer = DPOptimizer(
        base_optimizer,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.clip_norm,
        expected_batch_size=max(1, round_half(rate * count)),
        loss_reduction="mean",
        generator=noise,
    )
    wrapped.train()
    # Opacus' hooks on a model whose inputs need no gradient (frozen embeddings): expected, not a problem
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    loss_sum, seen, started = 0.0, 0, time.perf_counter()
    try:
        for step, indices in enumerate(poisson_batches(count, rate, steps, rng), start=1):
            interrupt.check()
            if len(indices) == 0:
                _empty_grad_samples(params)
            else:
                chosen = [examples[i] for i in indices]
                batch = encode_batch(tokenizer, chosen, task, training.max_length, device.device)
                with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
                    loss = wrapped(**batch).loss.float()
                check_finite_loss(loss, step)
                loss.backward()
                loss_sum += float(loss.detach())
                seen += len(indices)
            optimizer.pre_step()  # clip each record's gradient, sum, add noise, scale
            for p, anchor in zip(params, anchors, strict=False):
                assert p.grad is not None
                p.grad += training.proximal_mu * (p.detach() - anchor)
            base_optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr_schedule.step()
            if step % PROGRESS_EVERY == 0 or step == steps:
                rate_now = seen / max(time.perf_counter() - started, 1e-9)
                progress(f"dp-sgd step {step}/{steps} loss {loss_sum / step:.4f} {rate_now:.1f} examples/s")
    finally:
        wrapped.to_standard_module()  # the model is kept between tasks: no hooks left behind
        model.eval()
    seconds = time.perf_counter() - started
    result = TrainResult(
        train_loss=loss_sum / steps,
        num_examples=count,
        steps=steps,
        seconds=seconds,
        examples_per_second=seen / max(seconds, 1e-9),
    )
    return result, figures


def round_half(value: float) -> int:
    return int(value + 0.5)
