"""Score every round's global adapter of a generative experiment on a held-out test file.

The generative counterpart of `bench.scoring` (Admin API only, same per-site figures): each finetune
version is exported, loaded with `PeftModel.from_pretrained` on `<model_root>/<base_model.name>` (a fresh
float32 copy from disk per version, on CUDA when there is one; a QLoRA experiment is scored on the
unquantized base), and scored with the worker's own functions:

- `task: instruction`: the test conversations as a site prepares them (worker/instruction.py), the
  held-out loss on assistant tokens and its perplexity, and greedy generation (worker/generation.py)
  with the spec's `evaluation.generate` settings (GenerateSpec's defaults when the spec has none):
  test_exact_match, test_rouge_l;
- `task: causal-lm`: loss and perplexity over the test text (worker/evaluation.py).

Versions trained on a global stage's merged base are refused (scoring them needs the merged base).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.client import AdminClient
from bench.scoring import manifest_bytes, site_figures
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, GenerateSpec

GENERATIVE_TASKS = ("instruction", "causal-lm")
TEST_METRICS = ("test_loss", "test_perplexity", "test_exact_match", "test_rouge_l")


@dataclass(frozen=True)
class GenerativeTest:
    """A held-out test file as the spec's task reads it: conversations or plain text examples."""

    path: Path
    records: list[Any]  # worker.data.Conversation (instruction) or worker.data.Example (causal-lm)

    def __len__(self) -> int:
        return len(self.records)


def load_generative_test(spec: ExperimentSpec, test_file: Path) -> GenerativeTest:
    """Read `test_file` like a site reads its eval split (file:line errors, never values)."""
    from worker.data import load_conversations, load_examples

    if spec.task == "instruction":
        return GenerativeTest(Path(test_file), list(load_conversations(test_file)))
    return GenerativeTest(Path(test_file), list(load_examples(test_file, text_field=spec.data.text_field)))


def generate_settings(spec: ExperimentSpec) -> GenerateSpec:
    return spec.evaluation.generate or GenerateSpec()


def score_adapter(
    spec: ExperimentSpec, model_dir: Path, adapter_dir: Path, test: GenerativeTest, device: Any = None
) -> dict[str, float]:
    """test_loss, test_perplexity (and for instruction test_exact_match, test_rouge_l, ...) of one
    exported adapter folder on `test`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.device import select_device
    from worker.model import quiet_transformers

    device = device or select_device()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        model = PeftModel.from_pretrained(base, adapter_dir).to(device.device)
    return score_model(spec, model, tokenizer, test, device)


def score_model(
    spec: ExperimentSpec, model: Any, tokenizer: Any, test: GenerativeTest, device: Any
) -> dict[str, float]:
    """The test figures of a loaded model (an adapter on its base), as `score_adapter` reports them."""
    from worker.evaluation import evaluate
    from worker.generation import generation_examples, generation_metrics
    from worker.instruction import evaluate_loss, prepare

    training = spec.training_for(len(spec.stages) - 1)
    model.eval()
    batch_size = max(training.batch_size, 32)
    if spec.task != "instruction":
        return evaluate(
            model,
            tokenizer,
            test.records,
            task=spec.task,
            device=device,
            batch_size=batch_size,
            max_length=training.max_length,
            prefix="test_",
        )
    prepared = prepare(tokenizer, test.records, training.max_length)
    metrics = evaluate_loss(
        model,
        prepared.examples,
        pad_token_id=int(tokenizer.pad_token_id),
        device=device,
        batch_size=batch_size,
        prefix="test_",
    )
    settings = generate_settings(spec)
    prompts = generation_examples(
        tokenizer, test.records, limit=settings.examples, max_length=training.max_length
    )
    metrics.update(generation_metrics(model, tokenizer, prompts, settings, device=device, prefix="test_"))
    return metrics


def score_generative_versions(
    admin: AdminClient,
    experiment_id: str,
    spec: ExperimentSpec,
    model_root: Path,
    test: GenerativeTest,
    export_root: Path,
) -> dict[str, Any]:
    """Per finetune version (round 0 = the initial adapter): the test figures, the round's mean and
    per-site metrics as the workers reported them, and upload sizes. Keys: rounds, final, best_exact_match,
    upload_bytes_per_site_per_round."""
    if spec.task not in GENERATIVE_TASKS:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"experiment {experiment_id} is {spec.task}, not a generative task {list(GENERATIVE_TASKS)}",
        )
    versions = sorted(admin.list_models(experiment_id), key=lambda v: v.version)
    stage_index_by_name = {s.stage_name: i for i, s in enumerate(spec.stages) if s.kind == "finetune"}
    versions = [v for v in versions if v.stage in stage_index_by_name]
    round_infos = admin.list_rounds(experiment_id)
    rounds_by_version = {r.model_version_id: r for r in round_infos}
    per_site = site_figures(round_infos)
    model_dir = model_root / spec.base_model.name
    rows: list[dict[str, Any]] = []
    for step, version in enumerate(versions):
        out_dir = export_root / f"v{version.version}"
        admin.export_model(version.version_id, out_dir)
        if (out_dir / "base_version.json").is_file():
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"v{version.version} was trained on a global stage's merged base; the generative report "
                "scores adapters on the original base only",
            )
        scores = score_adapter(spec, model_dir, out_dir, test)
        info = rounds_by_version.get(version.version_id)
        metrics = dict(info.metrics) if info is not None else {}
        trained = version.round > 0
        upload = manifest_bytes(version)
        rows.append(
            {
                "version": int(version.version),
                "round": step,
                "stage": version.stage,
                "stage_round": int(version.round),
                **{key: scores.get(key) for key in TEST_METRICS},
                "test_generated_examples": scores.get("test_generated_examples"),
                "sites": sorted(version.sites),
                "mean_train_loss": metrics.get("train_loss"),
                "mean_site_metrics": {k: v for k, v in metrics.items() if k.startswith("eval_")},
                "site_metrics": per_site.get((stage_index_by_name[version.stage], int(version.round)), {})
                if trained
                else {},
                "upload_bytes_per_site": upload if trained else 0,
            }
        )
        shown = ", ".join(f"{k} {scores[k]:.4f}" for k in TEST_METRICS if k in scores)
        print(f"  v{version.version} ({version.stage} round {version.round}): {shown}", file=sys.stderr)
    exact = [r["test_exact_match"] for r in rows if r["test_exact_match"] is not None]
    return {
        "rounds": rows,
        "final": {key: rows[-1][key] for key in TEST_METRICS} if rows else {},
        "best_exact_match": max(exact, default=None),
        "upload_bytes_per_site_per_round": manifest_bytes(versions[-1]) if versions else 0,
    }
