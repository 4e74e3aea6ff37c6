"""The functional benchmark's base model: a small Llama trained from scratch on the synthetic prose.

Centralized, in this process, every parameter trained (plain causal-LM loss over the whole text, AdamW,
cosine decay, a fixed seed), then saved with `save_pretrained` next to its tokenizer so that workers
load it from their model root like any checkpoint.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.functional_task import make_tokenizer


@dataclass(frozen=True)
class BaseModelConfig:
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 256
    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0


def build_model(config: BaseModelConfig, tokenizer: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(config.seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(llama)


def pretrain(config: BaseModelConfig, texts: list[str], out_dir: Path) -> dict[str, Any]:
    """Train a fresh model on `texts` (each a document between BOS and EOS) and save it to `out_dir`."""
    import torch

    tokenizer = make_tokenizer()
    model = build_model(config, tokenizer)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, config.steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    started, losses = time.perf_counter(), []
    for step in range(config.steps):
        picks = torch.randint(len(texts), (config.batch_size,), generator=generator).tolist()
        docs = [tokenizer.bos_token + texts[i] + tokenizer.eos_token for i in picks]
        batch = tokenizer(docs, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"[pretrain] step {step + 1}/{config.steps} loss {recent:.3f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "config": asdict(config),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "documents": len(texts),
        "first_loss": losses[0],
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "seconds": seconds,
    }
