from __future__ import annotations

import pytest
import torch

from fedtune.errors import FedtuneError
from worker.device import select_device


def test_cpu_choice_reports_info_and_float32() -> None:
    choice = select_device("cpu")
    assert choice.device.type == "cpu"
    assert choice.train_dtype is torch.float32
    assert choice.info["kind"] == "cpu" and choice.info["bf16"] is False
    assert choice.info["memory_bytes"] >= 0


def test_thread_env_sets_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv("FEDTUNE_TORCH_THREADS", "1")
    try:
        select_device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_rejects_unknown_device_name() -> None:
    with pytest.raises(FedtuneError, match="unknown device"):
        select_device("tpu")
