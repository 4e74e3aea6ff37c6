"""Exact match and ROUGE-L (worker/text_scores.py) on hand-made examples, worked out by hand."""

from __future__ import annotations

import pytest

from worker.text_scores import GenerationScores, exact_match, rouge_l, score_generations


def test_exact_match_ignores_whitespace_runs_but_not_case_or_punctuation() -> None:
    assert exact_match("  the cat\n sat ", "the cat sat")
    assert not exact_match("The cat sat", "the cat sat")
    assert not exact_match("the cat sat.", "the cat sat")


def test_rouge_l_is_the_f_measure_of_the_longest_common_word_subsequence() -> None:
    # reference "the cat sat on the mat" (6 words), prediction "the cat on mat" (4 words): LCS 4
    # (the, cat, on, mat), so precision 4/4, recall 4/6, F = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    assert rouge_l("the cat on mat", "the cat sat on the mat") == pytest.approx(0.8)
    # order matters: "mat the" against "the mat" shares a subsequence of one word: P = R = F = 1/2
    assert rouge_l("mat the", "the mat") == pytest.approx(0.5)
    assert rouge_l("dog", "the cat") == 0.0


def test_rouge_l_is_case_blind_and_counts_non_latin_words() -> None:
    assert rouge_l("THE CAT", "the cat") == pytest.approx(1.0)
    # rouge-score's own tokenizer drops every non-[a-z0-9] character and would score this 0
    assert rouge_l("grüße aus köln", "grüße aus bonn") == pytest.approx(2 / 3)
    assert rouge_l("", "") == 1.0 and rouge_l("", "cat") == 0.0


def test_scores_average_over_examples_under_the_prefix() -> None:
    # Prepare / Execute
    scores = score_generations(["the cat sat", "a dog", "x"], ["the cat sat", "a big dog", "y"])

    # Assert: exact 1 of 3; ROUGE-L 1.0, 2 * 1 * (2/3) / (5/3) = 0.8, 0.0
    metrics = scores.metrics("test_")
    assert metrics == {
        "test_exact_match": pytest.approx(1 / 3),
        "test_rouge_l": pytest.approx(1.8 / 3),
        "test_generated_examples": 3.0,
    }
    assert GenerationScores().metrics()["eval_generated_examples"] == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score_generations(["a", "b"], ["a"])
