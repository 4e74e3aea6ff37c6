"""The GPU scale levers as spec fields: precision, quantization refusals, gradient accumulation,
checkpointing and clipping, and the learning-rate schedule over the whole federation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import BaseModelSpec, TrainingSpec
from tests.fixtures.tiny import instruction_spec, tiny_spec
from tests.worker.helpers import quiet, write_global
from worker.device import DeviceChoice
from worker.model_factory import ModelFactory
from worker.precision import check_quantization_available, with_precision
from worker.tasks import run_init, run_train
from worker.training import total_steps

CPU = DeviceChoice(torch.device("cpu"), torch.float32, {"kind": "cpu"})
CUDA_LOOKALIKE = DeviceChoice(torch.device("cuda", 0), torch.bfloat16, {"kind": "cuda", "bf16": True})
NO_EVAL = {"train": "train.jsonl", "eval": None}


@contextlib.contextmanager
def optimizer_steps() -> Iterator[list[dict[str, float]]]:
    """Per optimiser step: its learning rate and the gradient norm it is about to apply."""
    seen: list[dict[str, float]] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        seen.append({"lr": optimizer.param_groups[0]["lr"], "grad_norm": norm})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _global(spec: Any, model_root: Path, tmp_path: Path) -> Path:
    return write_global(tmp_path / "global.safetensors", run_init(spec, model_root).arrays)


# ----------------------------------------------------------------------------- spec validation
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"training": {"gradient_accumulation_steps": 0}}, "training.gradient_accumulation_steps"),
        ({"training": {"gradient_accumulation_steps": 5000}}, "training.gradient_accumulation_steps"),
        ({"training": {"warmup_ratio": 1.0}}, "training.warmup_ratio"),
        ({"training": {"lr_schedule": "exponential"}}, "training.lr_schedule"),
        ({"training": {"max_grad_norm": 0}}, "training.max_grad_norm"),
        ({"base_model": {"name": "m", "dtype": "fp8"}}, "base_model.dtype"),
        ({"base_model": {"name": "m", "quantization": "int4"}}, "base_model.quantization"),
        ({"base_model": {"name": "m", "quantization": "nf4", "dtype": "fp32"}}, "computes in bf16 or fp16"),
        ({"task": "causal-lm", "training": {"packing": True}}, "packing needs task instruction"),
        ({"peft": {"method": "prompt_tuning"}, "training": {"packing": True}}, "packing works with peft"),
    ],
)
def test_bad_scale_lever_values_are_refused_naming_the_field(change: dict, needle: str) -> None:
    with pytest.raises(FedtuneError, match=needle) as err:
        instruction_spec(**change)
    assert err.value.code == ErrorCode.INVALID_SPEC


def test_defaults_keep_the_plain_loop() -> None:
    training, base = TrainingSpec(), BaseModelSpec(name="m")
    assert (training.gradient_accumulation_steps, training.gradient_checkpointing) == (1, False)
    assert (training.max_grad_norm, training.lr_schedule, training.warmup_ratio) == (None, "constant", 0.0)
    assert (base.dtype, base.quantization, training.packing) == ("auto", "none", False)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_base_is_refused_without_cuda(model_root: Path, quantization: str) -> None:
    spec = instruction_spec(base_model={"name": "tiny-chat", "quantization": quantization})
    with pytest.raises(FedtuneError, match=f"quantization {quantization} .*needs a CUDA GPU") as err:
        run_init(spec, model_root, device="cpu")
    assert err.value.code == ErrorCode.UNAVAILABLE


def test_quantized_base_on_cuda_without_bitsandbytes_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FedtuneError, match="needs the bitsandbytes package"):
        check_quantization_available(BaseModelSpec(name="m", quantization="nf4"), CUDA_LOOKALIKE)


def test_fp16_is_refused_on_a_cpu_and_bf16_is_kept_for_the_forward_pass() -> None:
    with pytest.raises(FedtuneError, match="fp16 needs a CUDA GPU") as err:
        with_precision(CPU, BaseModelSpec(name="m", dtype="fp16"))
    assert err.value.code == ErrorCode.UNAVAILABLE
    assert with_precision(CPU, BaseModelSpec(name="m", dtype="bf16")).train_dtype == torch.bfloat16
    assert with_precision(CPU, BaseModelSpec(name="m")) == CPU  # auto: the device's choice


def test_bf16_base_loads_bf16_weights_and_trains_float32_adapters(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    # Prepare
    spec = instruction_spec(base_model={"name": "tiny-chat", "dtype": "bf16"})
    models = ModelFactory()
    global_path = _global(spec, model_root, tmp_path)
    # Execute
    out = run_train(spec, 0, 1, global_path, chat_data, model_root, models=models, progress=quiet)
    # Assert
    model = models.task_models.value.model  # type: ignore[union-attr]
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert np.isfinite(out.metrics["eval_loss"]) and all(a.dtype == np.float32 for a in out.arrays.values())


# ----------------------------------------------------------------------------- the loop
def test_accumulated_micro_batches_equal_one_large_batch_for_classification(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    # Prepare: a Llama classifier (tiny-bert has dropout, drawn differently for each micro-batch)
    llama = {"name": "tiny-llama"}
    one = tiny_spec(
        base_model=llama, data=NO_EVAL, training={"max_steps": 3, "batch_size": 8, "learning_rate": 1e-2}
    )
    four = tiny_spec(
        base_model=llama,
        data=NO_EVAL,
        training={"max_steps": 3, "batch_size": 2, "gradient_accumulation_steps": 4, "learning_rate": 1e-2},
    )
    global_path = _global(one, model_root, tmp_path)
    # Execute
    a = run_train(one, 0, 1, global_path, cls_data, model_root, progress=quiet)
    b = run_train(four, 0, 1, global_path, cls_data, model_root, progress=quiet)
    # Assert
    for name in a.arrays:
        np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=1e-4, atol=1e-6)
    assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-5)


def test_accumulated_micro_batches_average_over_all_tokens_of_the_step(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    # Prepare: examples of 16 and 22 tokens, so a mean of micro-batch means would differ
    base = {"max_steps": 3, "learning_rate": 1e-2, "max_length": 48}
    one = instruction_spec(data=NO_EVAL, training={**base, "batch_size": 8})
    four = instruction_spec(
        data=NO_EVAL, training={**base, "batch_size": 2, "gradient_accumulation_steps": 4}
    )
    global_path = _global(one, model_root, tmp_path)
    # Execute
    a = run_train(one, 0, 1, global_path, chat_data, model_root, progress=quiet)
    b = run_train(four, 0, 1, global_path, chat_data, model_root, progress=quiet)
    # Assert
    for name in a.arrays:
        np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=1e-4, atol=1e-6)
    assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-5)


def test_epochs_count_optimiser_steps_of_the_accumulated_batch() -> None:
    training = TrainingSpec(epochs=1.0, batch_size=4, gradient_accumulation_steps=5)
    assert total_steps(100, training) == 5


def test_gradient_checkpointing_keeps_fewer_activations_and_trains_the_same(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    # Prepare
    training = {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "max_length": 48}
    plain = instruction_spec(data=NO_EVAL, training=training)
    checkpointed = instruction_spec(data=NO_EVAL, training={**training, "gradient_checkpointing": True})
    global_path = _global(plain, model_root, tmp_path)
    runs: dict[str, Any] = {}
    for name, spec in (("plain", plain), ("checkpointed", checkpointed)):
        models, kept = ModelFactory(), []

        def pack(tensor: torch.Tensor, kept: list[int] = kept) -> torch.Tensor:
            kept.append(tensor.numel() * tensor.element_size())
            return tensor

        # Execute: every tensor autograd keeps for the backward pass goes through `pack`
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = run_train(spec, 0, 1, global_path, chat_data, model_root, models=models, progress=quiet)
        runs[name] = (out, sum(kept), models.task_models.value.model)  # type: ignore[union-attr]
    # Assert: layers kept only their inputs; the trained tensors are the same
    assert runs["checkpointed"][1] < 0.5 * runs["plain"][1]
    for key in runs["plain"][0].arrays:
        np.testing.assert_allclose(
            runs["plain"][0].arrays[key], runs["checkpointed"][0].arrays[key], atol=1e-6
        )
    assert not runs["checkpointed"][2].get_base_model().is_activation_checkpointing  # off after the task


def test_gradient_checkpointing_on_a_model_without_it_is_refused() -> None:
    from worker.training import checkpointing

    with pytest.raises(FedtuneError, match="Linear does not support gradient checkpointing"):
        with checkpointing(torch.nn.Linear(2, 2), True):
            pass


def test_max_grad_norm_clips_every_step(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    # Prepare
    training = {"max_steps": 3, "batch_size": 8, "learning_rate": 1e-2}
    clipped = tiny_spec(data=NO_EVAL, training={**training, "max_grad_norm": 1e-3})
    global_path = _global(clipped, model_root, tmp_path)
    # Execute
    with optimizer_steps() as free_steps:
        run_train(
            tiny_spec(data=NO_EVAL, training=training),
            0,
            1,
            global_path,
            cls_data,
            model_root,
            progress=quiet,
        )
    with optimizer_steps() as clipped_steps:
        run_train(clipped, 0, 1, global_path, cls_data, model_root, progress=quiet)
    # Assert
    assert all(s["grad_norm"] > 1e-2 for s in free_steps)
    assert all(s["grad_norm"] <= 1e-3 * (1 + 1e-4) for s in clipped_steps) and len(clipped_steps) == 3


# ----------------------------------------------------------------------------- LR schedule
@pytest.mark.parametrize(
    ("schedule", "reference"),
    [("cosine", get_cosine_schedule_with_warmup), ("linear", get_linear_schedule_with_warmup)],
)
def test_lr_at_round_r_step_s_is_the_schedule_at_the_global_step(
    model_root: Path, cls_data: Path, tmp_path: Path, schedule: str, reference: Any
) -> None:
    # Prepare: 3 planned rounds of 4 local steps: 12 steps, ceil(0.25 * 12) = 3 of warmup
    lr = 1e-2
    spec = tiny_spec(
        data=NO_EVAL,
        training={
            "max_steps": 4,
            "batch_size": 8,
            "learning_rate": lr,
            "lr_schedule": schedule,
            "warmup_ratio": 0.25,
        },
        stages=[{"kind": "finetune", "rounds": 3}],
    )
    global_path = _global(spec, model_root, tmp_path)
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    expected = []
    sched = reference(dummy, 3, 12)
    for _ in range(12):
        expected.append(dummy.param_groups[0]["lr"])
        dummy.step()
        sched.step()
    # Execute: rounds out of order, as a site may join late
    by_round = {}
    for round_number in (2, 1, 3):
        with optimizer_steps() as steps:
            run_train(spec, 0, round_number, global_path, cls_data, model_root, progress=quiet)
        by_round[round_number] = [s["lr"] for s in steps]
    # Assert
    got = by_round[1] + by_round[2] + by_round[3]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert got[0] == 0.0 and got[3] == pytest.approx(lr) and got[-1] < 0.2 * lr


def test_constant_schedule_keeps_the_lr_and_personalize_uses_its_own_steps(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(data=NO_EVAL, training={"max_steps": 3, "batch_size": 8, "learning_rate": 1e-2})
    global_path = _global(spec, model_root, tmp_path)
    with optimizer_steps() as steps:
        run_train(spec, 0, 2, global_path, cls_data, model_root, progress=quiet)
    assert [s["lr"] for s in steps] == [1e-2] * 3
