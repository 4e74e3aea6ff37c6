"""The instruction task: chat-template rendering, assistant-only labels, truncation, packing, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from fedtune.errors import ErrorCode, FedtuneError
from tests.fixtures.tiny import instruction_spec
from tests.worker.helpers import build_model, quiet, write_global
from worker import instruction
from worker.data import Conversation, load_conversations
from worker.tasks import run_init, run_personalize, run_train

HAND_MADE = Conversation(
    (
        ("system", "the news"),
        ("user", "the goal"),
        ("assistant", "match league"),
        ("user", "and shares"),
        ("assistant", "profit bank"),
    ),
    "hand-made:1",
)


def _tokens(tokenizer, chat: instruction.TokenizedChat) -> list[tuple[str, bool]]:
    return list(
        zip(tokenizer.convert_ids_to_tokens(chat.input_ids.tolist()), chat.scored.tolist(), strict=True)
    )


def test_only_assistant_tokens_are_labelled_with_the_models_chat_template(model_root: Path) -> None:
    # Prepare: the tiny chat tokenizer's template has no {% generation %} markers (prefix rendering)
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-chat")
    # Execute
    chat = instruction.prepare(tokenizer, [HAND_MADE], max_length=64).examples[0]
    # Assert: token by token, the replies and their end-of-turn markers only
    assert _tokens(tokenizer, chat) == [
        ("<s>", False),
        ("<|start|>", False), ("system", False), ("<|sep|>", False), ("the", False), ("news", False),
        ("<|eot|>", False),
        ("<|start|>", False), ("user", False), ("<|sep|>", False), ("the", False), ("goal", False),
        ("<|eot|>", False),
        ("<|start|>", False), ("assistant", False), ("<|sep|>", False),
        ("match", True), ("league", True), ("<|eot|>", True),
        ("<|start|>", False), ("user", False), ("<|sep|>", False), ("and", False), ("shares", False),
        ("<|eot|>", False),
        ("<|start|>", False), ("assistant", False), ("<|sep|>", False),
        ("profit", True), ("bank", True), ("<|eot|>", True),
    ]  # fmt: skip
    labels = chat.labels()
    assert (labels[chat.scored] == chat.input_ids[chat.scored]).all() and (labels[~chat.scored] == -100).all()


def test_fallback_template_labels_the_reply_and_eos_when_the_tokenizer_has_none(model_root: Path) -> None:
    # Prepare: tiny-llama's tokenizer has no chat template; the fallback has {% generation %} markers
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-llama")
    convo = Conversation((("user", "the goal"), ("assistant", "match league")), "x:1")
    assert instruction.chat_template(tokenizer) == instruction.FALLBACK_CHAT_TEMPLATE
    # Execute
    chat = instruction.prepare(tokenizer, [convo], max_length=64).examples[0]
    # Assert: role headers are not in this word list (<unk>), but are never labelled either
    assert _tokens(tokenizer, chat) == [
        ("<s>", False), ("<unk>", False), ("the", False), ("goal", False), ("<unk>", False),
        ("match", True), ("league", True), ("</s>", True),
    ]  # fmt: skip


def test_loss_is_computed_on_assistant_tokens_only(model_root: Path) -> None:
    # Prepare
    spec = instruction_spec()
    built = build_model(spec, model_root)
    chat = instruction.prepare(built.tokenizer, [HAND_MADE], max_length=64).examples[0]
    batch = instruction.collate([chat], built.tokenizer.pad_token_id, torch.device("cpu"))
    # Execute
    with torch.no_grad():
        out = built.model(**batch)
    # Assert: the model's loss is the mean CE over the (shifted) assistant tokens
    logits, ids = out.logits[0, :-1], batch["input_ids"][0, 1:]
    scored = torch.from_numpy(chat.scored[1:])
    reference = torch.nn.functional.cross_entropy(logits[scored], ids[scored])
    assert float(out.loss) == pytest.approx(float(reference), rel=1e-5)


def test_truncation_counts_cut_examples_and_drops_those_without_a_response(model_root: Path) -> None:
    # Prepare: `short` is 11 tokens, its reply at 9..10; `long` 13 tokens, its reply at 10..12
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-chat")
    short = Conversation((("user", "a"), ("assistant", "b")), "x:1")
    long = Conversation((("user", "the goal"), ("assistant", "match league")), "x:2")
    # Execute
    cut_reply = instruction.prepare(tokenizer, [short, long], max_length=11)
    no_reply = instruction.prepare(tokenizer, [short, long], max_length=10)
    # Assert
    assert (cut_reply.truncated, cut_reply.dropped, len(cut_reply.examples)) == (1, 0, 2)
    assert len(cut_reply.examples[1].input_ids) == 11 and cut_reply.examples[1].scored.sum() == 1
    # at 10 tokens `short` keeps its reply but loses its end-of-turn, `long` loses its whole reply
    assert (no_reply.truncated, no_reply.dropped, len(no_reply.examples)) == (1, 1, 1)
    assert no_reply.metrics() == {"truncated_examples": 1.0, "dropped_examples": 1.0}


def test_all_responses_cut_away_is_refused_naming_max_length(model_root: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-chat")
    with pytest.raises(FedtuneError, match="training.max_length 8") as err:
        instruction.prepare(tokenizer, [HAND_MADE], max_length=8)
    assert err.value.code == ErrorCode.INVALID_ARGUMENT


def test_template_that_rewrites_earlier_turns_is_refused_with_the_example(model_root: Path) -> None:
    # Prepare: a template that marks the last message differently breaks prefix rendering
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-chat")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %} last{% endif %} {% endfor %}"
    )
    # Execute / Assert
    with pytest.raises(FedtuneError, match="hand-made:1: the chat template does not render"):
        instruction.prepare(tokenizer, [HAND_MADE], max_length=64)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"messages": "secret-value"}', "field 'messages' must be a non-empty JSON array"),
        ('{"messages": [{"role": "wizard", "content": "secret-value"}]}', "messages[0].role must be one of"),
        ('{"messages": [{"role": "user", "content": 7}]}', "messages[0].content must be a string"),
        ('{"messages": [{"role": "user", "content": "secret-value"}]}', "has no assistant message"),
        ('{"prompt": "secret-value"}', "field 'response' must be a string, not a JSON null"),
        ('{"text": "secret-value"}', "needs a 'messages' array or 'prompt' and 'response'"),
    ],
)
def test_bad_instruction_records_name_file_line_and_field_never_values(
    tmp_path: Path, line: str, needle: str
) -> None:
    # Prepare
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "ok", "response": "fine"}\n' + line + "\n")
    # Execute
    with pytest.raises(FedtuneError) as err:
        load_conversations(path)
    # Assert
    assert f"{path}:2:" in err.value.message and needle in err.value.message
    assert "secret-value" not in err.value.message and "wizard" not in err.value.message


def test_prompt_response_records_become_user_and_assistant_turns(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"system": "s", "prompt": "p", "response": "r"}) + "\n")
    assert load_conversations(path) == [
        Conversation((("system", "s"), ("user", "p"), ("assistant", "r")), f"{path}:1")
    ]


def test_packing_keeps_each_example_to_itself(model_root: Path) -> None:
    # Prepare
    spec = instruction_spec()
    built = build_model(spec, model_root)
    short = Conversation((("user", "a"), ("assistant", "b")), "x:1")
    chats = instruction.prepare(built.tokenizer, [short, HAND_MADE], max_length=64).examples
    pad = built.tokenizer.pad_token_id
    # Execute
    packed = instruction.collate(chats, pad, torch.device("cpu"), packing=True)
    alone = instruction.collate(chats[1:], pad, torch.device("cpu"))
    with torch.no_grad():
        packed_logits = built.model(**packed).logits[0, len(chats[0].input_ids) :]
        alone_logits = built.model(**alone).logits[0]
    # Assert: one row, no padding, and the second example sees nothing of the first
    assert packed["input_ids"].shape == (1, sum(len(c.input_ids) for c in chats))
    assert "attention_mask" not in packed
    torch.testing.assert_close(packed_logits, alone_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "training_extra",
    [{}, {"packing": True}, {"proximal_mu": 0.01}],
    ids=["padded", "packed", "fedprox"],
)
def test_instruction_training_lowers_the_held_out_assistant_loss(
    model_root: Path, chat_data: Path, tmp_path: Path, training_extra: dict
) -> None:
    # Prepare
    training = {"max_steps": 30, "batch_size": 8, "learning_rate": 2e-2, "max_length": 48, **training_extra}
    spec = instruction_spec(training=training)
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)
    before = run_train(
        instruction_spec(training={**training, "learning_rate": 1e-9, "max_steps": 1}),
        0, 1, global_path, chat_data, model_root, site="a", progress=quiet,
    )  # fmt: skip
    # Execute
    out = run_train(spec, 0, 1, global_path, chat_data, model_root, site="a", progress=quiet)
    # Assert
    assert out.num_examples == 96 and set(out.arrays) == set(init.arrays)
    assert out.metrics["eval_loss"] < 0.7 * before.metrics["eval_loss"]
    assert out.metrics["truncated_examples"] == 0.0 and out.metrics["dropped_examples"] == 0.0
    assert out.metrics["eval_perplexity"] == pytest.approx(np.exp(out.metrics["eval_loss"]))
    assert out.metrics["worker_peak_rss_mb"] > 50


def test_instruction_training_reports_truncation_and_keeps_dp(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    # Prepare: the `messages` half of the data is 22 tokens long, its reply at 17..21: 20 tokens cut it
    spec = instruction_spec(
        training={"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "max_length": 20},
        privacy={"clip_norm": 0.01},
    )
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)
    # Execute
    out = run_train(spec, 0, 1, global_path, chat_data, model_root, site="a", progress=quiet)
    # Assert
    assert (out.metrics["truncated_examples"], out.metrics["dropped_examples"]) == (48.0, 0.0)
    assert out.metrics["eval_truncated_examples"] == 8.0 and out.num_examples == 96
    norm = np.sqrt(sum(np.sum((out.arrays[k] - init.arrays[k]) ** 2) for k in init.arrays))
    assert norm <= 0.01 + 1e-6


def test_instruction_personalize_reports_global_and_personal_loss(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    spec = instruction_spec()
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)
    out = run_personalize(
        spec, 0, global_path, chat_data, model_root, out_dir=tmp_path / "personal", progress=quiet
    )
    assert out.metrics["personal_eval_loss"] < out.metrics["global_eval_loss"]
    assert (tmp_path / "personal" / "adapter_config.json").is_file()
