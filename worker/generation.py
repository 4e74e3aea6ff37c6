"""Generation metrics of the instruction task: greedy replies to held-out prompts, scored against references.

Each held-out conversation gives one prompt and one reference: the prompt is the conversation up to its
last assistant message, rendered by the chat template (worker/instruction.py's, the fallback included)
with the generation prompt, exactly as training renders it; the reference is that message's content.
Messages after it are ignored. Prompts are tokenized like training text (the template writes the special
tokens), and a prompt longer than `training.max_length` tokens is skipped: training drops such examples
too, and cutting it would change the question.

Decoding is greedy (`do_sample=False`, a fresh GenerationConfig, so a model's shipped sampling settings do
not apply), left-padded in batches, with the KV cache on (the worker loads causal LMs without one, for
packing). A reply ends at the first end-of-sequence token (the tokenizer's EOS and the model's
`generation_config.eos_token_id`) and is decoded without special tokens. Scores: worker/text_scores.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedtune.spec import GenerateSpec
from worker import interrupt
from worker.data import Conversation
from worker.device import DeviceChoice
from worker.instruction import chat_template
from worker.text_scores import GenerationScores


@dataclass(frozen=True)
class GenerationExample:
    prompt_ids: np.ndarray  # int64 token ids of the rendered prompt, generation prompt included
    reference: str  # the last assistant message's content


def generation_examples(
    tokenizer: Any, conversations: Sequence[Conversation], *, limit: int, max_length: int
) -> list[GenerationExample]:
    """Prompt / reference pairs of the first `limit` usable conversations (file order)."""
    template = chat_template(tokenizer)
    out: list[GenerationExample] = []
    for convo in conversations:
        if len(out) >= limit:
            break
        messages = convo.as_dicts()
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        text = tokenizer.apply_chat_template(
            messages[:last], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        ids = np.asarray(tokenizer(str(text), add_special_tokens=False)["input_ids"], dtype=np.int64)
        if 0 < len(ids) <= max_length:
            out.append(GenerationExample(ids, messages[last]["content"]))
    return out


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Token ids that end a reply: the tokenizer's EOS and the model's generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif isinstance(config_eos, (list, tuple)):
        ids.update(int(i) for i in config_eos)
    return sorted(ids)


def _left_padded(
    examples: Sequence[GenerationExample], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e.prompt_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.prompt_ids)
        ids[row, width - n :] = torch.from_numpy(example.prompt_ids)
        mask[row, width - n :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_replies(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[GenerationExample],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: DeviceChoice,
) -> list[str]:
    """The greedy reply to each example's prompt, decoded without special tokens."""
    from transformers import GenerationConfig

    stops = stop_token_ids(model, tokenizer)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=stops or None,
    )
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for start in range(0, len(examples), batch_size):
            interrupt.check()
            chunk = examples[start : start + batch_size]
            ids, mask = _left_padded(chunk, pad_id, device.device)
            with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
                generate: Any = model.generate  # peft's and transformers' generate (untyped here)
                out = generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row in out[:, ids.shape[1] :].tolist():
                end = next((i for i, token in enumerate(row) if token in stops), len(row))
                replies.append(str(tokenizer.decode(row[:end], skip_special_tokens=True)).strip())
    finally:
        model.train(was_training)
    return replies


def generation_metrics(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[GenerationExample],
    settings: GenerateSpec,
    *,
    device: DeviceChoice,
    prefix: str = "eval_",
) -> dict[str, float]:
    """{prefix}exact_match, {prefix}rouge_l (means) and {prefix}generated_examples."""
    replies = generate_replies(
        model,
        tokenizer,
        examples,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        device=device,
    )
    scores = GenerationScores()
    for reply, example in zip(replies, examples, strict=True):
        scores.add(reply, example.reference)
    return scores.metrics(prefix)
