"""Held-out test accuracy of an exported adapter (base model + PeftModel.from_pretrained)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from demo.data import Article


def _quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

    hf_logging.set_verbosity_error()  # the base lacks a classifier head by design: no load report
    hf_logging.disable_progress_bar()


@functools.lru_cache(maxsize=2)
def _base_model(model_dir: Path, num_labels: int) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    return tokenizer, base


def load_classifier(model_dir: Path, adapter_dir: Path, num_labels: int) -> tuple[Any, Any]:
    """(tokenizer, PeftModel) for an exported adapter folder; the base is loaded once per process."""
    from peft import PeftModel

    tokenizer, base = _base_model(model_dir, num_labels)
    model = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir)
    model.eval()
    return tokenizer, model


def predict(
    tokenizer: Any, model: Any, texts: list[str], max_length: int = 128, batch_size: int = 32
) -> list[int]:
    import torch

    predictions: list[int] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**batch).logits
            predictions.extend(int(i) for i in logits.argmax(dim=-1))
    return predictions


def test_accuracy(model_dir: Path, adapter_dir: Path, labels: list[str], test: list[Article]) -> float:
    tokenizer, model = load_classifier(model_dir, adapter_dir, len(labels))
    predicted = predict(tokenizer, model, [a.text for a in test])
    correct = sum(1 for p, a in zip(predicted, test, strict=True) if labels[p] == a.label)
    return correct / len(test)
