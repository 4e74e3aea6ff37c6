"""Held-out test accuracy of an exported adapter (base model + PeftModel.from_pretrained)."""

from __future__ import annotations

from pathlib import Path

from fedtune.demo.data import Article


def load_classifier(model_dir: Path, adapter_dir: Path, num_labels: int):  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return tokenizer, model


def predict(tokenizer, model, texts: list[str], max_length: int = 128, batch_size: int = 32) -> list[int]:  # type: ignore[no-untyped-def]
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
