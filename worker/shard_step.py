"""One optimiser step's forward and backward passes on one rank of a multi-process train task.

worker/training.py runs the step loop; with a process group (worker/ranks.py) each step's micro-batches
come here instead of `_accumulate`: this rank's shard of the step, every loss normalised over the whole
step on all ranks (docs/decisions.md 38).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch

from fedtune.spec import TrainingSpec
from worker.device import DeviceChoice
from worker.instruction import scored_tokens
from worker.loss_check import check_finite_loss
from worker.ranks import RankGroup


def accumulate_shard(
    model: torch.nn.Module,
    group: RankGroup,
    indices: np.ndarray,
    batch_of: Callable[[np.ndarray], dict[str, torch.Tensor]],
    task: str,
    adjusted: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None,
    params: list[torch.nn.Parameter],
    anchors: list[torch.Tensor],
    training: TrainingSpec,
    device: DeviceChoice,
    scaler: torch.amp.GradScaler,
    step: int,
) -> float:
    """This rank's part of one step (`model` in DDP): its shard of the step's examples in micro-batches,
    each loss normalised over the whole step on all ranks and scaled by the world size (DDP averages
    the ranks' gradients). Only the last micro-batch all-reduces. A rank whose shard is empty (a step
    smaller than the group) still runs one weightless micro-batch, so every rank takes part in the
    all-reduce. Returns this rank's share of the step's loss (the shares sum to the step's loss)."""
    mine = group.shard(indices)
    weights = [1.0] * math.ceil(len(mine) / training.batch_size)
    micro = [batch_of(mine[i : i + training.batch_size]) for i in range(0, len(mine), training.batch_size)]
    if not micro:
        micro, weights = [batch_of(indices[:1])], [0.0]
    language_model = task != "sequence-classification"
    if language_model:
        local = sum(scored_tokens(b) for b, w in zip(micro, weights, strict=True) if w)
        tokens = int(group.sum(float(local), device.device))
    step_loss = 0.0
    for position, (batch, weight) in enumerate(zip(micro, weights, strict=True)):
        last = position == len(micro) - 1
        sync = contextlib.nullcontext() if last else model.no_sync()  # type: ignore[operator]
        with sync:
            with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
                share = weight * len(batch["labels"]) / len(indices)
                if adjusted is not None:
                    loss = adjusted(model, batch) * share
                elif language_model:
                    loss = model(**batch, num_items_in_batch=max(tokens, 1)).loss.float() * weight
                else:
                    loss = model(**batch).loss.float() * share
            objective = loss * group.world_size
            if anchors:  # each rank adds the whole term once per step, so the average is the term
                drift = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
                objective = objective + 0.5 * training.proximal_mu * drift / len(micro)
            check_finite_loss(objective, step)
            scaler.scale(objective).backward()  # type: ignore[no-untyped-call]
        step_loss += float(loss.detach())
    return step_loss
