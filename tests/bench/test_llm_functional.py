"""The functional LLM benchmark's pieces (bench/functional_task.py, functional_runs.py, functional_report.py):
the synthetic world is what the benchmark claims, and its report renders from a results document."""

from __future__ import annotations

import json
from pathlib import Path

from bench.functional_report import markdown, write_outputs
from bench.functional_runs import hetero_spec, spec_data
from bench.functional_task import (
    SKILLS,
    make_tokenizer,
    make_words,
    pretraining_texts,
    skill_of,
    write_instruction_data,
)
from fedtune.spec import parse_spec


def test_word_tokenizer_round_trips_text_and_renders_the_chat_template() -> None:
    tokenizer = make_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "cat color"}, {"role": "assistant", "content": "red"}], tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    assert text == "<s> <|user|> cat color <|eot|> <|assistant|> red <|eot|>"
    assert len(ids) == 5 + 2 + 1 and tokenizer.unk_token_id not in ids  # one token per word or marker
    assert tokenizer.decode(ids[-2:-1]) == "red"
    assert tokenizer.eos_token == "<|eot|>" and tokenizer.is_fast


def test_pretraining_states_every_fact_and_instruction_data_holds_out_nouns(tmp_path: Path) -> None:
    # Prepare
    words = make_words(0, n_held_out=14)
    texts = pretraining_texts(words.all, 300, seed=1)

    # Execute
    data = write_instruction_data(tmp_path, words, per_site=20, eval_per_site=4, test_per_skill=10, seed=2)

    # Assert: a fixed table of facts, all of them in the prose (the base can know every one)
    assert len(SKILLS) == 8 and all(len(s.apply(["cat"])) == 1 for s in SKILLS)
    sentences = {sentence for text in texts for sentence in text.removesuffix(" .").split(" . ")}
    facts = {s.prose(item) for s in SKILLS for item in words.all}
    assert sentences <= facts and len(sentences) > 0.9 * len(facts)
    # one attribute per site (non-IID by task type), trained on nouns the test set never asks about
    held = {item[0] for item in words.held_out}
    for site, skill in zip(data.sites, SKILLS, strict=True):
        rows = [
            json.loads(line) for line in (data.sites_root / site / "train.jsonl").read_text().splitlines()
        ]
        assert {skill_of(r["prompt"]) for r in rows} == {skill} and len(rows) == 20
        assert not {r["prompt"].split()[0] for r in rows} & held
    test = [json.loads(line) for line in data.test_file.read_text().splitlines()]
    assert len(test) == 10 * len(SKILLS) and {r["prompt"].split()[0] for r in test} <= held
    assert all(r["response"] == skill_of(r["prompt"]).apply([r["prompt"].split()[0]])[0] for r in test)


def test_hetero_variant_is_a_spec_option_that_is_skipped_with_the_reason_when_refused() -> None:
    data = spec_data(rounds=2, local_steps=3, batch_size=4, learning_rate=1e-2, rank=8, sites=8, seed=0)
    assert parse_spec(data).evaluation.generate is not None

    hetero = hetero_spec(data, {"site-1-color": 2})

    if isinstance(hetero, str):  # this branch has no peft.site_ranks
        assert "heterogeneous LoRA ranks are not available" in hetero and "site_ranks" in hetero
    else:
        assert hetero.stages[0].strategy.name == "hetero_lora"


def test_report_renders_tables_skips_and_a_plot(tmp_path: Path) -> None:
    scores = {"exact_match": 0.5, "rouge_l": 0.6, "loss": 1.2, "exact_match_per_skill": {"color": 1.0}}
    doc = {
        "config": {
            "rank": 8,
            "rounds": 1,
            "local_steps": 2,
            "batch_size": 4,
            "learning_rate": 0.01,
            "test_words": 1,
        },
        "base_model": {
            "parameters": 1000,
            "config": {"steps": 3},
            "seconds": 1.0,
            "first_loss": 4.0,
            "final_loss": 2.0,
        },
        "skills": ["color"],
        "sites": ["site-1-color"],
        "test_examples": 8,
        "cpu_count": 2,
        "load_average_before": [1.0, 1.0, 1.0],
        "load_average_after": [2.0, 1.0, 1.0],
        "wall_seconds": 10.0,
        "results": {"base": {**scores, "exact_match": 0.0}, "centralized": scores},
        "federated": {
            "federated": {
                "rounds": [
                    {**scores, "round": 0, "exact_match": 0.0, "site_eval_exact_match": {}},
                    {**scores, "round": 1, "site_eval_exact_match": {"site-1-color": 0.75}},
                ]
            }
        },
        "skipped": {"hetero": "heterogeneous LoRA ranks are not available on this branch"},
    }

    table = markdown(doc)
    paths = write_outputs(doc, tmp_path)

    assert "| federated (final round) | 50.0 | 60.0 | 1.200 | 100.0 |" in table
    assert "| 1 | 50.0 | 60.0 | 1.200 | 75.0 |" in table and "**hetero skipped**" in table
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
