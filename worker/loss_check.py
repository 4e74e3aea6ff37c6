"""The check every training loop makes before a backward pass: a NaN/Inf loss ends the task."""

from __future__ import annotations

import torch

from fedtune.errors import ErrorCode, FedtuneError


def check_finite_loss(loss: torch.Tensor, step: int) -> None:
    """NON_FINITE, naming the value and the step, when `loss` is NaN or infinite."""
    if not torch.isfinite(loss):
        raise FedtuneError(
            ErrorCode.NON_FINITE,
            f"training loss became {loss.item()} at step {step}; lower learning_rate",
        )
