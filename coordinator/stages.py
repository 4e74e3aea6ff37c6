"""What happens after a round closes: stage completion, the next stage, the experiment's end.

Shared by finetune/global rounds (closed by the aggregator with a new version) and personalize
rounds (closed by the scheduler with per-site metrics only, no new version).
"""

from __future__ import annotations

import json

from coordinator import lifecycle
from fedtune.spec import ExperimentSpec
from storage import models
from storage.uow import UnitOfWork

# Side file of every version built on a global stage's output (docs/decisions.md 11): which base
# version (the global-stage LoRA, merged into the site's base model) the adapter needs.
BASE_VERSION_FILE = "base_version.json"


def stage_needs_init(spec: ExperimentSpec, stage_index: int) -> bool:
    """A stage starts from its own INIT task when it is the first stage, or the first stage after the
    global stage(s): its adapter is new (built on the merged base); later stages continue the latest."""
    if stage_index == 0:
        return True
    return spec.stages[stage_index - 1].kind == "global" and spec.stages[stage_index].kind != "global"


def base_version_for_stage(uow: UnitOfWork, experiment_id: str, stage_index: int) -> str | None:
    """The last global-stage version a non-global stage builds on (None: the sites' own base model)."""
    if uow.stages.get(experiment_id, stage_index).kind == "global":
        return None
    return uow.stages.latest_global_output(experiment_id, stage_index)


def base_version_json(base: models.ModelVersion) -> bytes:
    """`base_version.json`: the global-stage version an adapter was trained on top of."""
    doc = {
        "base_version_id": base.id,
        "base_version": base.version,
        "base_stage": base.stage_name,
        "note": "this adapter was trained on the base model with that version's LoRA merged in "
        "(merge_and_unload); it loads on the original base, but faithful inference needs the merged base",
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def advance_after_round(
    uow: UnitOfWork, rnd: models.Round, output_version_id: str | None, now: float
) -> None:
    """After `rnd` committed: complete its stage when it was the last round, then move on or finish."""
    experiment = uow.experiments.get(rnd.experiment_id)
    assert experiment is not None
    stage = uow.stages.get(rnd.experiment_id, rnd.stage_index)
    experiment.current_round = rnd.round
    experiment.updated_at = now
    if rnd.round < stage.rounds_total:
        return
    lifecycle.complete_stage(uow, stage, output_version_id, now)
    if rnd.stage_index < uow.stages.last_index(rnd.experiment_id):
        experiment.current_stage_index = rnd.stage_index + 1
        experiment.current_round = 0
        return
    lifecycle.complete_experiment(uow, experiment, output_version_id, now)


def personalize_metrics(results: list[tuple[str, int, dict[str, float]]]) -> dict[str, float]:
    """Round metrics of a personalize round from (site, num_examples, metrics) of its done tasks.

    Every site's metrics as ``<site>.<metric>``, plus the example-weighted mean of each metric under
    its own name, plus ``personal_gain_<metric>`` (personal minus global) for eval metrics reported both
    ways, and ``sites_done``.
    """
    out: dict[str, float] = {"sites_done": float(len(results))}
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for site, num_examples, metrics in sorted(results):
        weight = float(max(num_examples, 1))
        for key, value in metrics.items():
            out[f"{site}.{key}"] = float(value)
            sums[key] = sums.get(key, 0.0) + float(value) * weight
            weights[key] = weights.get(key, 0.0) + weight
    means = {key: sums[key] / weights[key] for key in sums}
    out.update(means)
    for key, value in means.items():
        if key.startswith("personal_eval_"):
            other = "global_eval_" + key.removeprefix("personal_eval_")
            if other in means:
                out["personal_gain_" + key.removeprefix("personal_eval_")] = value - means[other]
    return out


def commit_personalize_round(uow: UnitOfWork, rnd: models.Round, now: float) -> dict[str, float]:
    """Close a personalize round: per-site metrics into the round, no aggregation, no new version."""
    rows = uow.tasks.done_in_round(rnd.id)
    metrics = personalize_metrics(
        [(site, task.num_examples, {k: float(v) for k, v in task.metrics.items()}) for task, site in rows]
    )
    stage = uow.stages.get(rnd.experiment_id, rnd.stage_index)
    lifecycle.commit_round(
        uow,
        rnd,
        now,
        metrics=metrics,
        message=f"{stage.name} round {rnd.round} closed with {len(rows)} personalized site(s)",
        data={"stage": stage.name, "sites": sorted(s for _, s in rows)},
    )
    advance_after_round(uow, rnd, None, now)
    return metrics
