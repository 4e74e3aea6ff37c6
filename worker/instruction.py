"""The instruction task: conversations through the tokenizer's chat template, loss on the assistant only.

Each conversation (worker/data.py `load_conversations`) is rendered with the tokenizer's chat template,
or with FALLBACK_CHAT_TEMPLATE when the tokenizer has none, and tokenized once, before training. A token
is scored (its label is its id; -100 elsewhere) when it overlaps an assistant message as the template
renders it, end-of-turn marker included, so the model learns to stop. The assistant spans come from:

- the template's own `{% generation %}` markers, through transformers'
  `apply_chat_template(..., return_assistant_tokens_mask=True)`, when the template has them;
- otherwise by rendering prefixes: the text between `messages[:i]` with the generation prompt and
  `messages[:i + 1]` is assistant message i. A template that does not render a conversation prefix by
  prefix (it rewrites earlier turns) is refused with the example's file and line.

Truncation keeps the first `max_length` tokens. An example that loses tokens is counted in
`truncated_examples`; one that loses every assistant token is dropped, never trained on as prompt-only
text, and counted in `dropped_examples`. Both figures go into the task's metrics.

Packing (`training.packing`) uses transformers' DataCollatorWithFlattening: a micro-batch becomes one
row without padding, with positions restarting at each example, from which transformers' attention
masks keep every example to itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedtune.errors import ErrorCode, FedtuneError
from worker import interrupt
from worker.data import Conversation
from worker.device import DeviceChoice

# Used when the tokenizer has no chat template (base models): role headers on their own line, the
# assistant's reply followed by the EOS token, with `{% generation %}` markers around what is scored.
FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}{% if eos_token %}{{ eos_token }}{% endif %}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")
IGNORE = -100


@dataclass(frozen=True)
class TokenizedChat:
    input_ids: np.ndarray  # int64 token ids, at most max_length
    scored: np.ndarray  # bool: True where the token belongs to an assistant message

    def labels(self) -> np.ndarray:
        return np.where(self.scored, self.input_ids, IGNORE)


@dataclass(frozen=True)
class InstructionSet:
    examples: list[TokenizedChat]
    truncated: int  # examples cut to max_length that still have assistant tokens
    dropped: int  # examples whose assistant tokens were all cut away, not used

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}truncated_examples": float(self.truncated),
            f"{prefix}dropped_examples": float(self.dropped),
        }


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template, or the documented fallback when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return template if isinstance(template, str) and template else FALLBACK_CHAT_TEMPLATE


def _render(tokenizer: Any, messages: list[dict[str, str]], template: str, prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
    )
    return str(text)


def _assistant_spans(tokenizer: Any, convo: Conversation, template: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of its assistant messages (prefix rendering)."""
    messages = convo.as_dicts()
    text = _render(tokenizer, messages, template, prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], template, prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], template, prompt=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"{convo.where}: the chat template does not render this conversation prefix by prefix, "
                "so the assistant's tokens cannot be found; use a template with {% generation %} markers",
            )
        spans.append((len(before), len(through)))
    return text, spans


def _scored_by_offsets(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """Tokens that overlap any span (spans and offsets both in order)."""
    scored = np.zeros(len(offsets), dtype=bool)
    span = 0
    for index, (start, end) in enumerate(offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        scored[index] = end > spans[span][0] and end > start
    return scored


def tokenize_conversation(tokenizer: Any, convo: Conversation, template: str) -> TokenizedChat:
    """The whole conversation's token ids and which of them are scored (no truncation)."""
    if not getattr(tokenizer, "is_fast", False):
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            "the instruction task needs a fast tokenizer (a tokenizer.json in the model folder) to map "
            "assistant messages to tokens",
        )
    if _GENERATION_MARK.search(template):
        out = tokenizer.apply_chat_template(
            convo.as_dicts(),
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, scored = np.asarray(out["input_ids"]), np.asarray(out["assistant_masks"], dtype=bool)
    else:
        text, spans = _assistant_spans(tokenizer, convo, template)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, scored = np.asarray(enc["input_ids"]), _scored_by_offsets(enc["offset_mapping"], spans)
    return TokenizedChat(ids.astype(np.int64), scored)


def prepare(tokenizer: Any, conversations: Sequence[Conversation], max_length: int) -> InstructionSet:
    """Tokenize and truncate every conversation; count truncated and dropped examples.

    A token is trainable only from position 1 on (the first token has nothing to be predicted from), so an
    example keeps its place when an assistant token survives at positions 1..max_length-1.
    """
    template = chat_template(tokenizer)
    kept: list[TokenizedChat] = []
    truncated = dropped = 0
    for convo in conversations:
        interrupt.check()
        chat = tokenize_conversation(tokenizer, convo, template)
        if not chat.scored[1:].any():
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"{convo.where}: the chat template renders no assistant token for this example",
            )
        if len(chat.input_ids) > max_length:
            chat = TokenizedChat(chat.input_ids[:max_length], chat.scored[:max_length])
            if not chat.scored[1:].any():
                dropped += 1
                continue
            truncated += 1
        kept.append(chat)
    if not kept:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"all {len(conversations)} examples lose their whole response at training.max_length "
            f"{max_length} tokens; raise training.max_length or shorten the prompts",
        )
    return InstructionSet(kept, truncated, dropped)


def collate(
    chats: Sequence[TokenizedChat], pad_token_id: int, device: torch.device, packing: bool = False
) -> dict[str, torch.Tensor]:
    """A model batch: right-padded rows with an attention mask, or with `packing` one flattened row
    with per-example position ids (DataCollatorWithFlattening)."""
    if packing:
        from transformers import DataCollatorWithFlattening

        features = [{"input_ids": c.input_ids.tolist(), "labels": c.labels().tolist()} for c in chats]
        flat = DataCollatorWithFlattening(return_tensors="pt", separator_id=IGNORE)(features)
        return {k: v.to(device) for k, v in flat.items() if k in ("input_ids", "labels", "position_ids")}
    width = max(len(c.input_ids) for c in chats)
    ids = torch.full((len(chats), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(chats), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(chats), width), dtype=torch.long)
    for row, chat in enumerate(chats):
        n = len(chat.input_ids)
        ids[row, :n] = torch.from_numpy(chat.input_ids)
        labels[row, :n] = torch.from_numpy(chat.labels())
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def scored_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens a causal-LM batch's loss averages over (labels are shifted by one inside the model)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum().item())


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    chats: Sequence[TokenizedChat],
    *,
    pad_token_id: int,
    device: DeviceChoice,
    batch_size: int,
    prefix: str = "eval_",
) -> dict[str, float]:
    """Held-out loss over the assistant tokens (token-weighted) and its perplexity."""
    was_training = model.training
    model.eval()
    loss_sum, weight_sum = 0.0, 0
    try:
        for start in range(0, len(chats), batch_size):
            interrupt.check()
            batch = collate(chats[start : start + batch_size], pad_token_id, device.device)
            with torch.autocast(device.device.type, dtype=device.train_dtype, enabled=device.autocast):
                out = model(**batch)
            weight = scored_tokens(batch)
            loss_sum += float(out.loss.float()) * weight
            weight_sum += weight
    finally:
        model.train(was_training)
    mean_loss = loss_sum / max(weight_sum, 1)
    return {
        f"{prefix}loss": mean_loss,
        f"{prefix}perplexity": math.exp(min(mean_loss, 50.0)),
        f"{prefix}examples": float(len(chats)),
        f"{prefix}tokens": float(weight_sum),
    }
