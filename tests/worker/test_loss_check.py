"""A NaN or infinite training loss ends the task with NON_FINITE, naming the value and the step."""

from __future__ import annotations

import pytest
import torch

from fedtune.errors import ErrorCode, FedtuneError
from worker.loss_check import check_finite_loss


def test_a_finite_loss_passes() -> None:
    check_finite_loss(torch.tensor(2.5), step=1)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_loss_is_refused_naming_the_step(value: float) -> None:
    with pytest.raises(FedtuneError) as caught:
        check_finite_loss(torch.tensor(value), step=7)
    assert caught.value.code == ErrorCode.NON_FINITE
    assert "at step 7" in caught.value.message and "lower learning_rate" in caught.value.message
