"""The language-modelling objective of a `global` stage: seeded BERT-style masking and LM batches.

Masked LM (encoders): 15% of the real tokens are picked; of those 80% become [MASK], 10% a random
token, 10% stay; only picked tokens are scored. The masks come from a torch generator seeded by the
caller, so an evaluation with the same seed scores exactly the same positions before and after
training. Causal LM (decoders): every non-pad token is scored (labels = input ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from worker import interrupt
from worker.data import Example
from worker.device import DeviceChoice

LmKind = Literal["masked", "causal"]
MASK_PROBABILITY = 0.15


def mask_tokens(
    input_ids: torch.Tensor, special: torch.Tensor, tokenizer: Any, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels) for BERT's 80/10/10 scheme; `special` marks tokens never picked.

    At least one token per batch is picked (the first eligible one) so the loss is always defined.
    """
    ids = input_ids.cpu()
    eligible = ~special.cpu().bool()
    picked = (torch.rand(ids.shape, generator=generator) < MASK_PROBABILITY) & eligible
    if not bool(picked.any()) and bool(eligible.any()):
        picked.view(-1)[int(eligible.view(-1).nonzero()[0])] = True
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    draw = torch.rand(ids.shape, generator=generator)
    masked = ids.clone()
    masked[picked & (draw < 0.8)] = int(tokenizer.mask_token_id)
    randomized = picked & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    masked[randomized] = random_ids[randomized]
    return masked.to(input_ids.device), labels.to(input_ids.device)


def encode_lm_batch(
    tokenizer: Any,
    examples: Sequence[Example],
    kind: LmKind,
    max_length: int,
    device: torch.device,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """A padded batch with LM labels (masked with `generator` for `kind == "masked"`)."""
    enc = tokenizer(
        [ex.text for ex in examples],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
        return_special_tokens_mask=kind == "masked",
    )
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if kind == "masked":
        special = enc["special_tokens_mask"].bool() | (batch["attention_mask"] == 0)
        batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], special, tokenizer, generator)
    else:
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
    return {k: v.to(device) for k, v in batch.items()}


def scored_tokens(batch: dict[str, torch.Tensor], kind: LmKind) -> int:
    labels = batch["labels"] if kind == "masked" else batch["labels"][:, 1:]
    return int((labels != -100).sum().item())


@torch.no_grad()
def lm_eval_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    kind: LmKind,
    device: DeviceChoice,
    seed: int,
    batch_size: int = 32,
    max_length: int = 128,
) -> float:
    """Token-weighted mean LM loss over `examples`; the masks depend only on `seed` and the data."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    loss_sum, weight_sum = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            interrupt.check()
            batch = encode_lm_batch(
                tokenizer, examples[start : start + batch_size], kind, max_length, device.device, generator
            )
            with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
                loss = model(**batch).loss
            weight = scored_tokens(batch, kind)
            loss_sum += float(loss.float()) * weight
            weight_sum += weight
    finally:
        model.train(was_training)
    return loss_sum / max(weight_sum, 1)
