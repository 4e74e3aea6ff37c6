"""The demo's experiment: LoRA on all-MiniLM-L6-v2, BBC News, FedAvg over 4 non-IID sites."""

from __future__ import annotations

import yaml

MODEL_NAME = "all-MiniLM-L6-v2"


def demo_spec_yaml(labels: list[str], rounds: int, local_steps: int, strategy: str = "fedavg") -> str:
    spec = {
        "name": "bbc-news-lora-demo",
        "base_model": {"name": MODEL_NAME},
        "task": "sequence-classification",
        "labels": labels,
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "text_field": "text", "label_field": "label"},
        "peft": {
            "method": "lora",
            "r": 8,
            "alpha": 16,
            "dropout": 0.05,
            "target_modules": ["query", "key", "value", "dense"],
        },
        "training": {"max_steps": local_steps, "batch_size": 16, "learning_rate": 1e-3, "max_length": 128},
        "stages": [
            {
                "kind": "finetune",
                "rounds": rounds,
                "selection": {"mode": "all", "min_sites": 4},
                "strategy": {"name": strategy},
                "deadline_seconds": 900,
            }
        ],
        "seed": 0,
    }
    return str(yaml.safe_dump(spec, sort_keys=False))
