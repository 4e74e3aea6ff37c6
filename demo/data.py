"""Split BBC News into a held-out test set and N sites with a Dirichlet label skew (non-IID)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Article:
    text: str
    label: str


@dataclass(frozen=True)
class SiteSplit:
    name: str
    train: list[Article]
    eval: list[Article]

    def label_counts(self, labels: list[str]) -> list[int]:
        return [sum(1 for a in self.train if a.label == label) for label in labels]


def read_corpus(corpus_dir: Path) -> tuple[list[str], list[Article]]:
    """All articles (title + body on one line), with the class folder names as labels."""
    labels = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir())
    articles = []
    for label in labels:
        for path in sorted((corpus_dir / label).glob("*.txt")):
            text = " ".join(path.read_text(errors="ignore").split())
            articles.append(Article(text, label))
    return labels, articles


def dirichlet_sites(
    articles: list[Article],
    labels: list[str],
    num_sites: int,
    alpha: float,
    seed: int,
    test_fraction: float = 0.2,
    eval_fraction: float = 0.1,
    min_per_site: int = 20,
) -> tuple[list[Article], list[SiteSplit]]:
    """Hold out a stratified test set, then deal each class to the sites in Dirichlet(alpha)
    proportions (small alpha = strong skew). Re-draws until every site has min_per_site articles."""
    rng = np.random.default_rng(seed)
    by_label = {label: [a for a in articles if a.label == label] for label in labels}
    test: list[Article] = []
    pool: dict[str, list[Article]] = {}
    for label in labels:
        items = list(by_label[label])
        rng.shuffle(items)
        cut = int(round(len(items) * test_fraction))
        test.extend(items[:cut])
        pool[label] = items[cut:]
    for _attempt in range(100):
        shares: list[list[Article]] = [[] for _ in range(num_sites)]
        for label in labels:
            items = pool[label]
            proportions = rng.dirichlet([alpha] * num_sites)
            cuts = (np.cumsum(proportions)[:-1] * len(items)).astype(int)
            for site_index, part in enumerate(np.split(np.arange(len(items)), cuts)):
                shares[site_index].extend(items[i] for i in part)
        if min(len(s) for s in shares) >= min_per_site:
            break
    sites = []
    for index, share in enumerate(shares):
        order = rng.permutation(len(share))
        shuffled = [share[i] for i in order]
        n_eval = max(1, int(round(len(shuffled) * eval_fraction)))
        sites.append(SiteSplit(f"site-{chr(ord('a') + index)}", shuffled[n_eval:], shuffled[:n_eval]))
    return test, sites


def write_jsonl(path: Path, articles: list[Article]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for article in articles:
            out.write(json.dumps({"text": article.text, "label": article.label}) + "\n")


def read_jsonl(path: Path) -> list[Article]:
    with path.open() as src:
        return [Article(**json.loads(line)) for line in src if line.strip()]
