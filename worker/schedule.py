"""The learning-rate schedule over the whole federation (`training.lr_schedule`, `warmup_ratio`).

A site trains `local_steps` optimiser steps per round and the stage plans `rounds` rounds, so the
federation's schedule has `rounds * local_steps` steps, and local step s of round r (both from 1) is
global step (r - 1) * local_steps + s - 1. Each round starts a fresh optimiser, but its scheduler starts
at that global step, so warmup happens once, in the first round(s), and the decay reaches zero at the
end of the last planned round. The schedules are transformers' own (`get_*_schedule_with_warmup`);
warmup is ceil(warmup_ratio * total steps), as the transformers Trainer computes it.

A task outside the stage's rounds (a personalize task, round 0) runs the schedule over its own steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from fedtune.spec import TrainingSpec


@dataclass(frozen=True)
class SchedulePosition:
    offset: int  # global step of this round's first local step
    total: int  # steps of the whole schedule
    warmup: int


def position(training: TrainingSpec, local_steps: int, round: int, rounds: int) -> SchedulePosition:
    if round < 1 or rounds < 1:  # not a federated round: a schedule over this task alone
        offset, total = 0, local_steps
    else:
        offset, total = (min(round, rounds) - 1) * local_steps, rounds * local_steps
    return SchedulePosition(offset, total, math.ceil(training.warmup_ratio * total))


def scheduler(
    optimizer: torch.optim.Optimizer, training: TrainingSpec, local_steps: int, round: int, rounds: int
) -> LambdaLR:
    """The schedule of `training`, already advanced to this round's first global step."""
    where = position(training, local_steps, round, rounds)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # what LambdaLR scales when started mid-way
    last = where.offset - 1
    made: LambdaLR
    if training.lr_schedule == "cosine":
        made = get_cosine_schedule_with_warmup(optimizer, where.warmup, where.total, last_epoch=last)
    elif training.lr_schedule == "linear":
        made = get_linear_schedule_with_warmup(optimizer, where.warmup, where.total, last_epoch=last)
    else:
        made = get_constant_schedule_with_warmup(optimizer, where.warmup, last_epoch=last)
    return made
