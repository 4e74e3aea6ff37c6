"""Tiny models and data, built once per test session (a few hundred milliseconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.tiny import (
    make_classification_data,
    make_instruction_data,
    make_text_data,
    make_tiny_model,
)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root, "tiny-bert", "bert")
    make_tiny_model(root, "tiny-llama", "llama")
    make_tiny_model(root, "tiny-chat", "llama-chat")
    return root


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cls-data")
    make_classification_data(folder, ["sport", "business"], n_train=200, n_eval=40, seed=1)
    return folder


@pytest.fixture(scope="session")
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm-data")
    make_text_data(folder, n_train=100, n_eval=20, seed=1)
    return folder


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat-data")
    make_instruction_data(folder, n_train=96, n_eval=16, seed=1)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
