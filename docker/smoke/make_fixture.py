"""Write the compose smoke test's site folders: a tiny BERT and its tokenizer, and tiny JSONL data.

Runs inside the worker image (it has torch and transformers): the model is random weights built from
a config and the tokenizer comes from a fixed word list, as tests/fixtures/tiny.py makes them, so
nothing is downloaded. Layout, for SITE in site-a site-b:

    OUT/SITE/models/tiny-bert/   config.json, model.safetensors, vocab.txt, tokenizer files
    OUT/SITE/data/train.jsonl    {"text": ..., "label": "sport" | "business"}, label-correlated words
    OUT/SITE/data/eval.jsonl

Usage: python make_fixture.py OUT [SITE ...]
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

MODEL_NAME = "tiny-bert"
LABELS = ["sport", "business"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLER = ["the", "a", "of", "and", "to", "in", "is", "it", "for", "on", "today", "people", "said", "new"]
CUES = [["goal", "match", "league", "coach", "score"], ["shares", "profit", "bank", "trade", "stocks"]]
N_TRAIN = 48
N_EVAL = 16


def make_model(folder: Path) -> None:
    import torch
    from transformers import AutoModel, BertConfig, BertTokenizerFast  # type: ignore[attr-defined]

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    tokens = SPECIAL + FILLER + [w for group in CUES for w in group]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def make_data(folder: Path, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def row(label: int) -> str:
        words = rng.choices(FILLER, k=4) + rng.choices(CUES[label], k=3)
        rng.shuffle(words)
        return json.dumps({"text": " ".join(words), "label": LABELS[label]}) + "\n"

    (folder / "train.jsonl").write_text("".join(row(rng.randrange(len(LABELS))) for _ in range(N_TRAIN)))
    (folder / "eval.jsonl").write_text("".join(row(i % len(LABELS)) for i in range(N_EVAL)))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    sites = argv[2:] or ["site-a", "site-b"]
    first = out / sites[0] / "models" / MODEL_NAME
    make_model(first)
    for index, site in enumerate(sites):
        model = out / site / "models" / MODEL_NAME
        if model != first:
            shutil.copytree(first, model, dirs_exist_ok=True)
        make_data(out / site / "data", seed=index)
        print(f"make_fixture: {out / site}: models/{MODEL_NAME}, data/ ({N_TRAIN} train, {N_EVAL} eval)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
