"""The benchmark's data: the demo's Dirichlet split written as per-site JSONL, plus the test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from demo.data import Article, SiteSplit, dirichlet_sites, read_corpus, write_jsonl
from fedtune.errors import ErrorCode, FedtuneError


@dataclass(frozen=True)
class BenchData:
    labels: list[str]
    test: list[Article]
    sites: list[SiteSplit]
    sites_root: Path  # <sites_root>/<site>/{train,eval}.jsonl: each worker's --data-root

    def summary(self) -> dict[str, object]:
        return {
            "labels": self.labels,
            "test_examples": len(self.test),
            "sites": {
                s.name: {
                    "train": len(s.train),
                    "eval": len(s.eval),
                    "train_label_counts": s.label_counts(self.labels),
                }
                for s in self.sites
            },
        }


def prepare_data(
    corpus_dir: Path, work: Path, num_sites: int, alpha: float, seed: int, max_test: int | None = None
) -> BenchData:
    """Read a corpus of class folders, hold out a test set, deal the rest to sites (Dirichlet alpha)."""
    if not Path(corpus_dir).is_dir():
        raise FedtuneError(ErrorCode.NOT_FOUND, f"corpus dir {corpus_dir} does not exist (--corpus-dir)")
    labels, articles = read_corpus(Path(corpus_dir))
    if len(labels) < 2 or not articles:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"corpus dir {corpus_dir} needs one folder per class (>= 2) holding .txt files",
        )
    min_per_site = max(2, min(20, len(articles) // (num_sites * 4)))
    test, sites = dirichlet_sites(articles, labels, num_sites, alpha, seed=seed, min_per_site=min_per_site)
    small = [s.name for s in sites if len(s.train) < 1]
    if small:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"sites {small} got no training articles: use fewer --sites or a larger --alpha",
        )
    if max_test is not None:
        test = test[:: max(1, len(test) // max_test)][:max_test]  # stratified order: keep every class
    root = Path(work) / "sites"
    for site in sites:
        write_jsonl(root / site.name / "train.jsonl", site.train)
        write_jsonl(root / site.name / "eval.jsonl", site.eval)
    write_jsonl(Path(work) / "test.jsonl", test)
    return BenchData(labels=labels, test=test, sites=sites, sites_root=root)
