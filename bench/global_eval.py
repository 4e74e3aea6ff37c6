"""Figures of a run with a `global` stage first (docs/decisions.md 11), computed in the bench process.

* Held-out LM loss of each global version (the aggregated LoRA, version 0 = the untouched base) on every
  site's eval text, example-weighted, with the worker's own functions (`ModelFactory.lm_model`,
  `worker.global_stage.eval_texts` / `eval_loss`: what a global-stage train task reports).
* Test accuracy of a finetune version on the base its sites trained on: the original base with the
  global version's LoRA merged in (`ModelFactory.merged_backbone`, `worker.model.load_backbone_state`,
  as the worker builds it), then the exported finetune adapter on top (`PeftModel.from_pretrained`).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from demo.data import Article
from fedtune.spec import ExperimentSpec

ADAPTER_FILE = "adapter_model.safetensors"
BASE_VERSION_FILE = "base_version.json"


def base_version_id(adapter_dir: Path) -> str | None:
    """The global version an exported adapter was trained on (its `base_version.json`), if any."""
    path = Path(adapter_dir) / BASE_VERSION_FILE
    if not path.is_file():
        return None
    return str(json.loads(path.read_text())["base_version_id"])


def _cpu() -> Any:
    from worker.device import select_device

    return select_device("cpu")


@functools.cache
def _models() -> Any:
    """This process's one model factory: consecutive versions of a run reuse the loaded base."""
    from worker.model_factory import ModelFactory

    return ModelFactory()


def global_lm_loss(
    spec: ExperimentSpec, model_root: Path, tensor_file: Path, sites_root: Path, sites: list[str]
) -> dict[str, Any]:
    """{loss_key, mean, sites: {site: loss}} of a global version on each site's eval text."""
    from fedtune.tensorstream.safetensors_file import read_arrays_float32
    from worker.global_stage import eval_loss, eval_texts, loss_key
    from worker.model import load_trainable_arrays

    built, kind = _models().lm_model(spec, model_root, _cpu())
    load_trainable_arrays(built.model, read_arrays_float32(Path(tensor_file)))
    training = spec.training_for(0)
    per_site: dict[str, float] = {}
    weights: dict[str, int] = {}
    for site in sites:
        examples = eval_texts(spec, Path(sites_root) / site)
        if examples:
            per_site[site] = eval_loss(built, kind, examples, spec, training)
            weights[site] = len(examples)
    total = sum(weights.values())
    mean = sum(per_site[s] * weights[s] for s in per_site) / total if total else None
    return {"loss_key": loss_key(kind), "mean": mean, "sites": per_site}


@functools.lru_cache(maxsize=1)
def _merged_classifier_base(
    spec_json: str, model_root: Path, global_tensor_file: Path, num_labels: int
) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fedtune.spec import ExperimentSpec
    from worker.model import load_backbone_state, model_dir

    spec = ExperimentSpec.model_validate_json(spec_json)
    path = model_dir(spec, model_root)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    _digest, state = _models().merged_backbone(spec, model_root, global_tensor_file, _cpu())
    load_backbone_state(base, state)
    return tokenizer, base


def merged_base_test_accuracy(
    spec: ExperimentSpec,
    model_root: Path,
    global_tensor_file: Path,
    adapter_dir: Path,
    labels: list[str],
    test: list[Article],
) -> float:
    """Test accuracy of an exported finetune adapter on the base with the global LoRA merged in."""
    from peft import PeftModel

    from demo.evaluate import predict

    tokenizer, base = _merged_classifier_base(
        spec.model_dump_json(), Path(model_root), Path(global_tensor_file), len(labels)
    )
    model = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir)
    model.eval()
    predicted = predict(tokenizer, model, [a.text for a in test])
    return sum(1 for p, a in zip(predicted, test, strict=True) if labels[p] == a.label) / len(test)


def global_rounds_report(
    round_infos: list[Any], aggregated: dict[int, dict[str, Any]], per_site: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """The global stage's figures: per round the sites' mean LM loss after local training (as the
    workers report it), the aggregated version's loss, and whether each lowered the base's loss."""
    ordered = sorted(round_infos, key=lambda r: r.round)
    key = next((k for k in ("eval_mlm_loss", "eval_clm_loss") if ordered and k in ordered[0].metrics), None)
    key = key or "eval_mlm_loss"
    base = ordered[0].metrics.get("base_" + key) if ordered else None
    base_aggregated = aggregated.get(0, {}).get("mean")
    rows: list[dict[str, Any]] = []
    previous = base_aggregated
    for info in ordered:
        metrics = dict(info.metrics)
        local = metrics.get(key)
        agg = aggregated.get(int(info.round), {})
        mean = agg.get("mean")
        rows.append(
            {
                "round": int(info.round),
                "base_" + key: base,
                key: local,
                "decreased_vs_base": None if local is None or base is None else local < base,
                "aggregated_" + key: mean,
                "aggregated_decreased_vs_base": (
                    None if mean is None or base_aggregated is None else mean < base_aggregated
                ),
                "aggregated_decreased_vs_previous": (
                    None if mean is None or previous is None else mean < previous
                ),
                "mean_train_loss": metrics.get("train_loss"),
                "site_metrics": per_site.get(int(info.round), {}),
                "aggregated_site_losses": agg.get("sites", {}),
            }
        )
        previous = mean if mean is not None else previous
    last = rows[-1] if rows else {}
    return {
        "loss_key": key,
        "base_loss": base,
        "base_loss_aggregated_eval": base_aggregated,
        "final_loss": last.get(key),
        "final_loss_aggregated": last.get("aggregated_" + key),
        "lowered": last.get("decreased_vs_base"),
        "lowered_aggregated": last.get("aggregated_decreased_vs_base"),
        "rounds": rows,
        "note": (
            f"{key}: example-weighted mean over sites of each site's model after its local training "
            f"in that round (the workers' report); base_{key}: the same on the untouched base (round 1). "
            f"aggregated_{key}: the round's aggregated global LoRA, evaluated by the bench on every "
            "site's eval text (weighted by eval examples); the base row is version 0 (zero LoRA)."
        ),
    }
