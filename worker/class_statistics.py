"""A site's fedncm update: per-class sums of the classifier's input features, and class counts.

See fedtune/class_statistics.py for the layout and coordinator/strategies/fedncm for what the
coordinator makes of it. The features are captured by a forward hook on the classifier layer, in
eval mode (no dropout), so they are exactly what the head sees at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from peft import PeftModel

from fedtune.class_statistics import head_tensor_names
from fedtune.errors import ErrorCode, FedtuneError
from worker import interrupt
from worker.batches import encode_batch
from worker.data import Example
from worker.device import DeviceChoice

PROGRESS_EVERY_BATCHES = 10


def _head_module(model: PeftModel, head: str) -> torch.nn.Module:
    base = model.get_base_model()
    try:
        return base.get_submodule(head)
    except AttributeError:
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"the base model has no module {head!r}: set strategy.options.head to its classifier layer "
            "(e.g. classifier, classifier.out_proj)",
        ) from None


@torch.no_grad()
def class_feature_sums(
    model: PeftModel,
    tokenizer: object,
    examples: Sequence[Example],
    *,
    head: str,
    num_classes: int,
    device: DeviceChoice,
    batch_size: int = 32,
    max_length: int = 128,
    progress: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray]:
    """(sums (classes, features) float64, counts (classes,) float64) over the labelled `examples`."""
    if not examples:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "no training examples for class statistics")
    captured: list[torch.Tensor] = []

    def keep_input(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach())

    handle = _head_module(model, head).register_forward_pre_hook(keep_input)
    was_training = model.training
    model.eval()
    sums: np.ndarray | None = None
    counts = np.zeros(num_classes, dtype=np.float64)
    batches = (len(examples) + batch_size - 1) // batch_size
    try:
        for number, start in enumerate(range(0, len(examples), batch_size), start=1):
            interrupt.check()
            chunk = examples[start : start + batch_size]
            batch = encode_batch(tokenizer, chunk, "sequence-classification", max_length, device.device)
            captured.clear()
            with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
                model(**{k: v for k, v in batch.items() if k != "labels"})
            if len(captured) != 1 or captured[0].dim() != 2 or captured[0].shape[0] != len(chunk):
                raise FedtuneError(
                    ErrorCode.INVALID_SPEC,
                    f"layer {head!r} did not see one (batch, features) input per forward pass; "
                    "point strategy.options.head at the classifier's final linear layer",
                )
            features = captured[0].to("cpu", torch.float64).numpy()
            if sums is None:
                sums = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
            labels = batch["labels"].cpu().numpy()
            np.add.at(sums, labels, features)
            counts += np.bincount(labels, minlength=num_classes)
            if number % PROGRESS_EVERY_BATCHES == 0 or number == batches:
                progress(f"class statistics: batch {number}/{batches}")
    finally:
        handle.remove()
        model.train(was_training)
    assert sums is not None
    return sums, counts


def statistics_update(
    global_arrays: dict[str, np.ndarray], sums: np.ndarray, counts: np.ndarray, head: str
) -> dict[str, np.ndarray]:
    """The global tensors with the head's weight and bias replaced by the sums and counts."""
    weight_name, bias_name = head_tensor_names(global_arrays, head)
    if global_arrays[weight_name].shape != sums.shape or global_arrays[bias_name].shape != counts.shape:
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"class statistics {sums.shape}/{counts.shape} do not fit {weight_name} "
            f"{global_arrays[weight_name].shape} / {bias_name} {global_arrays[bias_name].shape}",
        )
    out = dict(global_arrays)
    out[weight_name] = sums.astype(np.float32)
    out[bias_name] = counts.astype(np.float32)
    return out
