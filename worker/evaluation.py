"""Evaluation: accuracy + mean loss for classification, loss + perplexity for causal LM."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from worker import interrupt
from worker.batches import encode_batch, loss_weight
from worker.data import Example
from worker.device import DeviceChoice


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokenizer: object,
    examples: Sequence[Example],
    *,
    task: str,
    device: DeviceChoice,
    batch_size: int = 32,
    max_length: int = 128,
    prefix: str = "eval_",
) -> dict[str, float]:
    """Metrics over `examples`, keys prefixed (eval_accuracy, eval_loss / eval_perplexity)."""
    was_training = model.training
    model.eval()
    loss_sum, weight_sum, correct = 0.0, 0, 0
    try:
        for start in range(0, len(examples), batch_size):
            interrupt.check()
            chunk = examples[start : start + batch_size]
            batch = encode_batch(tokenizer, chunk, task, max_length, device.device)
            with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
                out = model(**batch)
            weight = loss_weight(batch, task)
            loss_sum += float(out.loss.float()) * weight
            weight_sum += weight
            if task == "sequence-classification":
                correct += int((out.logits.argmax(dim=-1) == batch["labels"]).sum())
    finally:
        model.train(was_training)
    mean_loss = loss_sum / max(weight_sum, 1)
    metrics = {f"{prefix}loss": mean_loss, f"{prefix}examples": float(len(examples))}
    if task == "sequence-classification":
        metrics[f"{prefix}accuracy"] = correct / max(len(examples), 1)
    else:
        metrics[f"{prefix}perplexity"] = math.exp(min(mean_loss, 50.0))
    return metrics
