"""Scores of generated text against a reference: exact match and ROUGE-L (no torch here).

- *Exact match* compares the two strings after collapsing runs of whitespace and stripping the ends;
  case and punctuation count (an instruction that asks for upper case is answered in upper case).
- *ROUGE-L* is the F-measure of the longest common subsequence of words, computed by Google's
  `rouge-score` package (the reference implementation behind most published ROUGE figures), without
  stemming. Its default tokenizer keeps only ``[a-z0-9]`` and so scores any non-Latin text 0; words here
  are Unicode word runs (``\\w+``, lower-cased), which is the same on plain English text.
  Two empty strings score 1.0 (the library says 0).

`GenerationScores` sums per-example scores; its `metrics(prefix)` gives the means a task reports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """The text with every run of whitespace made one space and the ends stripped."""
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


class _UnicodeWords:
    """rouge-score's tokenizer interface (`tokenize(text) -> list[str]`) over Unicode word runs."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


@cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_UnicodeWords())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of `prediction` against `reference`, in [0, 1]."""
    if not _WORD.search(prediction) and not _WORD.search(reference):
        return 1.0
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


@dataclass
class GenerationScores:
    """Running sums of exact match and ROUGE-L over scored examples."""

    examples: int = 0
    exact: int = 0
    rouge_l_sum: float = 0.0

    def add(self, prediction: str, reference: str) -> None:
        self.examples += 1
        self.exact += int(exact_match(prediction, reference))
        self.rouge_l_sum += rouge_l(prediction, reference)

    def metrics(self, prefix: str = "eval_") -> dict[str, float]:
        n = max(self.examples, 1)
        return {
            f"{prefix}exact_match": self.exact / n,
            f"{prefix}rouge_l": self.rouge_l_sum / n,
            f"{prefix}generated_examples": float(self.examples),
        }


def score_generations(predictions: Sequence[str], references: Sequence[str]) -> GenerationScores:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scores = GenerationScores()
    for prediction, reference in zip(predictions, references, strict=True):
        scores.add(prediction, reference)
    return scores
