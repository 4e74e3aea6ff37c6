"""The functional benchmark's runs: federated (real coordinator + worker daemons), local-only, centralized.

Every run starts from the same pretrained base and the same seeded LoRA, and is scored by `score` on the
global held-out test set (every skill on held-out words): loss on the answer tokens, greedy exact match
and ROUGE-L overall and exact match per skill. Federated runs are scored per round on each exported
version (round 0 = the initial adapter, i.e. the base); local-only and centralized once, at the end,
after the same number of examples seen as a federated run (the quality benchmark's budget rule).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.functional_task import SKILLS, InstructionData, skill_of
from fedtune.errors import FedtuneError
from fedtune.spec import ExperimentSpec, GenerateSpec, parse_spec

MODEL_NAME = "functional-llama"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _log(message: str) -> None:
    print(f"[llm-functional] {message}", file=sys.stderr, flush=True)


def spec_data(
    *, rounds: int, local_steps: int, batch_size: int, learning_rate: float, rank: int, sites: int, seed: int
) -> dict[str, Any]:
    """The federated LoRA spec (fedavg over all sites), as a dict the variants edit."""
    return {
        "name": "llm-functional",
        "base_model": {"name": MODEL_NAME, "dtype": "fp32"},
        "task": "instruction",
        "peft": {"method": "lora", "r": rank, "alpha": 2 * rank, "dropout": 0.0, "target_modules": TARGETS},
        "training": {
            "max_steps": local_steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_length": 64,
            "seed": seed,
        },
        "evaluation": {"generate": {"max_new_tokens": 16, "examples": 16, "batch_size": 16}},
        "stages": [
            {
                "kind": "finetune",
                "rounds": rounds,
                "selection": {"min_sites": sites},
                "strategy": {"name": "fedavg"},
                "deadline_seconds": 1800,
            }
        ],
        "seed": seed,
    }


def hetero_spec(data: dict[str, Any], ranks: dict[str, int]) -> ExperimentSpec | str:
    """The heterogeneous-rank variant (peft.site_ranks + the hetero_lora strategy), or why it cannot run."""
    edited = json.loads(json.dumps(data))
    edited["name"] = "llm-functional-hetero"
    edited["peft"]["site_ranks"] = ranks
    edited["stages"][0]["strategy"] = {"name": "hetero_lora"}
    try:
        return parse_spec(edited)
    except FedtuneError as err:
        return f"heterogeneous LoRA ranks are not available on this branch (the spec is refused: {err})"


def test_conversations(test_file: Path) -> list[Any]:
    from worker.data import load_conversations

    return load_conversations(test_file)


def score(
    spec: ExperimentSpec, model: Any, tokenizer: Any, conversations: list[Any], device: Any
) -> dict[str, Any]:
    """Loss and perplexity on the answers, greedy exact match and ROUGE-L, exact match per skill."""
    from worker.generation import generate_replies, generation_examples
    from worker.instruction import evaluate_loss, prepare
    from worker.text_scores import GenerationScores

    training = spec.training
    prepared = prepare(tokenizer, conversations, training.max_length)
    out: dict[str, Any] = evaluate_loss(
        model,
        prepared.examples,
        pad_token_id=int(tokenizer.pad_token_id),
        device=device,
        batch_size=64,
        prefix="",
    )
    settings = GenerateSpec(max_new_tokens=16, examples=len(conversations), batch_size=48)
    examples = generation_examples(
        tokenizer, conversations, limit=len(conversations), max_length=training.max_length
    )
    replies = generate_replies(
        model,
        tokenizer,
        examples,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        device=device,
    )
    overall = GenerationScores()
    per_skill = {skill.name: GenerationScores() for skill in SKILLS}
    for convo, example, reply in zip(conversations, examples, replies, strict=True):
        overall.add(reply, example.reference)
        per_skill[skill_of(convo.messages[0][1]).name].add(reply, example.reference)
    out.update(overall.metrics(""))
    out["exact_match_per_skill"] = {name: s.metrics("")["exact_match"] for name, s in per_skill.items()}
    out["sample_replies"] = [
        {"prompt": c.messages[0][1], "reference": e.reference, "reply": r}
        for c, e, r in list(zip(conversations, examples, replies, strict=True))[: len(SKILLS)]
    ]
    return out


def _built(spec: ExperimentSpec, model_root: Path) -> Any:
    from worker.device import select_device
    from worker.model_factory import ModelFactory

    return ModelFactory().model(spec, model_root, select_device("cpu"))


def base_scores(spec: ExperimentSpec, model_root: Path, conversations: list[Any]) -> dict[str, Any]:
    """The base with the initial LoRA (B = 0: the base's own behaviour)."""
    built = _built(spec, model_root)
    return score(spec, built.model, built.tokenizer, conversations, built.device)


def train_alone(
    spec: ExperimentSpec, model_root: Path, train_file: Path, steps: int, conversations: list[Any], site: str
) -> dict[str, Any]:
    """A fresh seeded LoRA trained `steps` steps on `train_file` in this process, scored on the test set."""
    from fedtune.spec import TrainingSpec
    from worker.data import load_conversations
    from worker.instruction import collate, prepare
    from worker.training import train

    built = _built(spec, model_root)
    training = TrainingSpec.model_validate({**spec.training.model_dump(), "max_steps": steps})
    chats = prepare(built.tokenizer, load_conversations(train_file), training.max_length).examples
    pad = int(built.tokenizer.pad_token_id)
    started = time.perf_counter()
    result = train(
        built.model,
        built.tokenizer,
        chats,
        task="instruction",
        training=training,
        device=built.device,
        site=site,
        progress=lambda _line: None,
        encode=lambda batch: collate(batch, pad, built.device.device),
    )
    scores = score(spec, built.model, built.tokenizer, conversations, built.device)
    return {
        **scores,
        "train_loss": result.train_loss,
        "train_steps": result.steps,
        "train_seconds": time.perf_counter() - started,
    }


def run_federated(
    cluster: Any,
    spec: ExperimentSpec,
    data: InstructionData,
    conversations: list[Any],
    export_root: Path,
    timeout: float,
) -> dict[str, Any]:
    """One experiment through the real coordinator; per round the global adapter's scores and the sites'
    own eval figures (exact match on their own skill, as each worker measured it)."""
    from bench.config import spec_yaml
    from bench.scoring import site_figures
    from demo.progress import follow_experiment
    from fedtune.errors import ErrorCode
    from worker.model import load_trainable_arrays

    started = time.monotonic()
    experiment_id = cluster.admin.submit_experiment(spec_yaml(spec), start=True).experiment_id
    state = follow_experiment(cluster.admin, cluster.group, experiment_id, timeout)
    if state != "completed":
        error = cluster.admin.get_experiment(experiment_id).error
        raise FedtuneError(ErrorCode.WRONG_STATE, f"experiment {spec.name} ended {state}: {error}")
    training_seconds = time.monotonic() - started
    from fedtune.tensorstream.safetensors_file import read_arrays_float32

    built = _built(spec, cluster.model_root)
    per_site = site_figures(cluster.admin.list_rounds(experiment_id))
    rows = []
    for version in sorted(cluster.admin.list_models(experiment_id), key=lambda v: v.version):
        out_dir = export_root / spec.name / f"v{version.version}"
        cluster.admin.export_model(version.version_id, out_dir)
        arrays = read_arrays_float32(out_dir / "adapter_model.safetensors")
        trained = {k: v for k, v in arrays.items() if k in _trainable_names(built)}
        load_trainable_arrays(built.model, trained)
        scores = score(spec, built.model, built.tokenizer, conversations, built.device)
        sites = per_site.get((0, int(version.round)), {})
        rows.append(
            {
                "round": int(version.round),
                **scores,
                "site_eval_exact_match": {s: m.get("eval_exact_match") for s, m in sites.items()},
                "site_train_loss": {s: m.get("train_loss") for s, m in sites.items()},
            }
        )
        shown = f"exact match {scores['exact_match']:.3f} loss {scores['loss']:.3f}"
        _log(f"{spec.name} round {version.round}: {shown}")
    return {"experiment_id": experiment_id, "rounds": rows, "training_seconds": training_seconds}


def _trainable_names(built: Any) -> set[str]:
    from worker.model import trainable_arrays

    return set(trainable_arrays(built.model))
