"""Generation metrics of the instruction task (worker/generation.py) on the tiny chat Llama.

Prompts follow the chat template up to the last assistant turn, the reference is that turn; batched
left-padded greedy decoding equals decoding one prompt at a time; a real train task reports exact match
and ROUGE-L that rise with training; the spec refuses generation where it cannot run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtune.errors import FedtuneError
from fedtune.spec import GenerateSpec
from tests.fixtures.tiny import instruction_spec
from tests.worker.helpers import build_model, quiet, write_global
from worker.data import Conversation
from worker.generation import generate_replies, generation_examples, generation_metrics
from worker.tasks import run_init, run_train

GENERATE = {"generate": {"max_new_tokens": 6, "examples": 16, "batch_size": 4}}


def test_prompt_is_the_chat_up_to_the_last_assistant_turn_with_the_generation_prompt(
    model_root: Path,
) -> None:
    # Prepare: a two-exchange conversation with a trailing user turn (ignored)
    built = build_model(instruction_spec(), model_root)
    convo = Conversation(
        (
            ("system", "the news"),
            ("user", "goal"),
            ("assistant", "match league"),
            ("user", "film"),
            ("assistant", "music actor album"),
            ("user", "vote"),
        ),
        "eval.jsonl:1",
    )

    # Execute
    [example] = generation_examples(built.tokenizer, [convo], limit=5, max_length=64)

    # Assert: the template's rendering, the earlier assistant turn included, ending in the generation prompt
    prompt = built.tokenizer.decode(example.prompt_ids.tolist())
    assert prompt == (
        "<s> <|start|> system <|sep|> the news <|eot|> <|start|> user <|sep|> goal <|eot|> "
        "<|start|> assistant <|sep|> match league <|eot|> <|start|> user <|sep|> film <|eot|> "
        "<|start|> assistant <|sep|>"
    )
    assert example.reference == "music actor album"


def test_prompts_longer_than_max_length_are_skipped_and_limit_keeps_file_order(model_root: Path) -> None:
    built = build_model(instruction_spec(), model_root)
    long = Conversation((("user", " ".join(["the"] * 40)), ("assistant", "goal")), "eval.jsonl:1")
    short = [
        Conversation((("user", w), ("assistant", "goal")), f"eval.jsonl:{i + 2}")
        for i, w in enumerate(["a", "of", "to"])
    ]

    examples = generation_examples(built.tokenizer, [long, *short], limit=2, max_length=20)

    assert [built.tokenizer.decode(e.prompt_ids.tolist()).split()[4] for e in examples] == ["a", "of"]


def test_batched_left_padded_decoding_equals_one_prompt_at_a_time(model_root: Path, chat_data: Path) -> None:
    # Prepare: prompts of different lengths (with and without a system turn) in one batch
    from worker.data import load_conversations

    built = build_model(instruction_spec(), model_root)
    examples = generation_examples(
        built.tokenizer, load_conversations(chat_data / "eval.jsonl"), limit=6, max_length=48
    )
    assert len({len(e.prompt_ids) for e in examples}) > 1

    # Execute
    together = generate_replies(
        built.model, built.tokenizer, examples, max_new_tokens=5, batch_size=6, device=built.device
    )
    alone = [
        generate_replies(
            built.model, built.tokenizer, [e], max_new_tokens=5, batch_size=1, device=built.device
        )[0]
        for e in examples
    ]

    # Assert
    assert together == alone and all(isinstance(r, str) for r in together)


def test_train_task_reports_exact_match_and_rouge_l_that_training_raises(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    # Prepare
    training = {"max_steps": 80, "batch_size": 8, "learning_rate": 3e-2, "max_length": 48}
    spec = instruction_spec(training=training, evaluation=GENERATE)
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)
    untrained = instruction_spec(
        training={**training, "learning_rate": 1e-9, "max_steps": 1}, evaluation=GENERATE
    )

    # Execute
    before = run_train(untrained, 0, 1, global_path, chat_data, model_root, site="a", progress=quiet)
    after = run_train(spec, 0, 1, global_path, chat_data, model_root, site="a", progress=quiet)

    # Assert: the base never answers exactly; the trained adapter (a 2-layer, 32-wide model) answers some
    # held-out prompts exactly and shares far more words with the references
    assert before.metrics["eval_generated_examples"] == 16.0
    assert before.metrics["eval_exact_match"] == 0.0
    assert after.metrics["eval_exact_match"] > 0.0
    assert after.metrics["eval_rouge_l"] > before.metrics["eval_rouge_l"] + 0.2
    assert after.metrics["eval_rouge_l"] >= after.metrics["eval_exact_match"]
    assert "eval_loss" in after.metrics and "eval_perplexity" in after.metrics


def test_generation_metrics_match_a_hand_check_of_the_replies(model_root: Path, chat_data: Path) -> None:
    # Prepare
    from worker.data import load_conversations
    from worker.text_scores import exact_match

    built = build_model(instruction_spec(), model_root)
    examples = generation_examples(
        built.tokenizer, load_conversations(chat_data / "eval.jsonl"), limit=4, max_length=48
    )
    settings = GenerateSpec(max_new_tokens=4, examples=4, batch_size=2)

    # Execute
    metrics = generation_metrics(
        built.model, built.tokenizer, examples, settings, device=built.device, prefix="x_"
    )
    replies = generate_replies(
        built.model, built.tokenizer, examples, max_new_tokens=4, batch_size=4, device=built.device
    )

    # Assert
    expected = sum(exact_match(r, e.reference) for r, e in zip(replies, examples, strict=True)) / 4
    assert metrics["x_exact_match"] == expected and metrics["x_generated_examples"] == 4.0
    assert all(len(r.split()) <= 4 for r in replies)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "causal-lm"}, "evaluation.generate needs task instruction"),
        ({"data": {"eval": None}}, "evaluation.generate needs data.eval"),
        ({"evaluation": {"generate": {"max_new_tokens": 0}}}, "evaluation.generate.max_new_tokens"),
        ({"evaluation": {"generate": {"examples": 5, "beams": 2}}}, "evaluation.generate.beams"),
    ],
)
def test_spec_refuses_generation_it_cannot_run_naming_the_field(overrides: dict, message: str) -> None:
    data = {**json.loads(instruction_spec().to_json()), "evaluation": GENERATE, **overrides}
    with pytest.raises(FedtuneError, match=message):
        instruction_spec(**{k: v for k, v in data.items() if k in ("task", "data", "evaluation")})
