"""Turn examples into padded, tokenized batches for classification or causal LM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from worker.data import Example


def encode_batch(
    tokenizer: Any, examples: Sequence[Example], task: str, max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        [ex.text for ex in examples],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    batch = {
        k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    if task == "sequence-classification":
        batch["labels"] = torch.tensor([ex.label for ex in examples], dtype=torch.long, device=device)
    else:
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
    return batch


def loss_weight(batch: dict[str, torch.Tensor], task: str) -> int:
    """What a batch's mean loss is averaged over: examples (classification) or predicted tokens (LM)."""
    if task == "sequence-classification":
        return int(batch["labels"].shape[0])
    return int((batch["labels"][:, 1:] != -100).sum().item())
