"""A fedncm round at a site: class feature sums and counts instead of training (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtune.class_statistics import head_tensor_names
from fedtune.errors import ErrorCode, FedtuneError
from tests.fixtures.tiny import tiny_spec
from tests.worker.helpers import build_model, quiet, write_global
from worker.tasks import run_init, run_train

pytestmark = pytest.mark.slow

STATS = {"class_statistics": "classifier"}
PROMPT = {"method": "prompt_tuning", "num_virtual_tokens": 4}


def _label_counts(data: Path, labels: list[str]) -> list[int]:
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    return [sum(1 for r in rows if r["label"] == label) for label in labels]


@pytest.mark.parametrize("peft", [None, PROMPT], ids=["lora", "prompt-tuning"])
def test_sends_class_counts_and_feature_sums_and_leaves_the_rest(
    model_root: Path, cls_data: Path, tmp_path: Path, peft: dict | None
) -> None:
    spec = tiny_spec(peft=peft) if peft else tiny_spec()
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)

    out = run_train(spec, 0, 1, global_path, cls_data, model_root, progress=quiet, training_overrides=STATS)

    weight, bias = head_tensor_names(out.arrays, "classifier")
    assert out.arrays[bias].tolist() == _label_counts(cls_data, ["sport", "business"])
    assert out.metrics["class_statistics_examples"] == 200 == out.num_examples
    assert out.arrays[weight].shape == init.arrays[weight].shape
    assert not np.allclose(out.arrays[weight], 0.0)
    for name in set(init.arrays) - {weight, bias}:
        np.testing.assert_array_equal(out.arrays[name], init.arrays[name])


def test_feature_sums_are_the_pooled_outputs_summed_per_class(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    spec = tiny_spec()
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, progress=quiet, training_overrides=STATS)
    # the classifier of BERT reads the pooler output: compute it directly, without hooks
    built = build_model(spec, model_root)
    rows = [json.loads(line) for line in (cls_data / "train.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows if r["label"] == "business"]
    batch = built.tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = built.model.get_base_model().bert(**batch).pooler_output

    weight, _ = head_tensor_names(out.arrays, "classifier")
    np.testing.assert_allclose(out.arrays[weight][1], pooled.sum(0).numpy(), rtol=1e-4, atol=1e-4)


def test_unknown_head_is_invalid_spec(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    spec = tiny_spec()
    global_path = write_global(tmp_path / "global.safetensors", run_init(spec, model_root).arrays)

    with pytest.raises(FedtuneError) as err:
        run_train(
            spec,
            0,
            1,
            global_path,
            cls_data,
            model_root,
            progress=quiet,
            training_overrides={"class_statistics": "no_such_layer"},
        )

    assert err.value.code is ErrorCode.INVALID_SPEC
    assert "strategy.options.head" in err.value.message
