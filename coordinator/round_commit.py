"""What a round's commit reads and writes: the plan (files, sites, metrics) and the changes that go with
the new version in its transaction (the round committed, the strategy state, the stage/experiment moving on).
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator import lifecycle
from coordinator.stages import advance_after_round
from coordinator.strategies.base import RoundResult
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.encoder import manifest_for_file
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.safetensors_file import read_header
from storage import models
from storage.blobs import BlobStore
from storage.uow import UnitOfWork


def weighted_metric_means(updates: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Example-count weighted mean of each metric over the updates that reported it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for num_examples, metrics in updates:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * num_examples
            weights[key] = weights.get(key, 0.0) + num_examples
    return {key: sums[key] / weights[key] for key in sums if weights[key] > 0}


@dataclass(frozen=True)
class CommitPlan:
    experiment_id: str
    stage_index: int
    stage_name: str
    round: int
    base_version_id: str | None
    next_version: int
    files: dict[str, bytes]
    sites: list[str]
    num_examples: int
    client_metrics: dict[str, float]


def get_round(uow: UnitOfWork, round_id: str) -> models.Round:
    rnd = uow.rounds.get(round_id)
    if rnd is None:
        raise FedtuneError(ErrorCode.NOT_FOUND, f"no round {round_id!r}")
    return rnd


def commit_plan(uow: UnitOfWork, round_id: str, blobs: BlobStore) -> CommitPlan:
    rnd = get_round(uow, round_id)
    stage = uow.stages.get(rnd.experiment_id, rnd.stage_index)
    base = uow.versions.get(rnd.base_version_id) if rnd.base_version_id else None
    files: dict[str, bytes] = {}
    for name, digest in (base.files if base is not None else {}).items():
        with blobs.open(str(digest)) as handle:
            files[name] = handle.read()
    rows = uow.rounds.foldable_updates(round_id, by_site=True)
    top = uow.versions.latest(rnd.experiment_id)
    return CommitPlan(
        experiment_id=rnd.experiment_id,
        stage_index=rnd.stage_index,
        stage_name=stage.name,
        round=rnd.round,
        base_version_id=rnd.base_version_id,
        next_version=(top.version if top is not None else 0) + 1,
        files=files,
        sites=[site for _, site in rows],
        num_examples=sum(u.num_examples for u, _ in rows),
        client_metrics=weighted_metric_means([(u.num_examples, dict(u.metrics)) for u, _ in rows]),
    )


def apply_commit(
    uow: UnitOfWork,
    round_id: str,
    version: models.ModelVersion,
    metrics: dict[str, float],
    state_digest: str | None,
    state_scalars: dict[str, float],
    now: float,
) -> None:
    """Everything that changes with the new version, in its transaction."""
    rnd = get_round(uow, round_id)
    uow.versions.add_strategy_state(
        models.StrategyState(
            experiment_id=rnd.experiment_id,
            stage_index=rnd.stage_index,
            round=rnd.round,
            blob_digest=state_digest,
            scalars=state_scalars,
        )
    )
    stage = uow.stages.get(rnd.experiment_id, rnd.stage_index)
    lifecycle.commit_round(
        uow,
        rnd,
        now,
        metrics=metrics,
        version_id=version.id,
        message=f"{stage.name} round {rnd.round} committed as version {version.version}",
        data={
            "stage": stage.name,
            "version_id": version.id,
            "sites": list(version.sites),
            "num_examples": version.num_examples,
        },
    )
    advance_after_round(uow, rnd, version.id, now)


def version_manifest(result: RoundResult) -> Manifest:
    """The new version's manifest: from the digests taken as it was written (it is not read again,
    decision 41), else by reading the file."""
    digests = result.new_tensors_digests
    if digests is not None:
        return Manifest(read_header(result.new_tensors_path)[0].tensors, digests.data)
    return manifest_for_file(result.new_tensors_path)
