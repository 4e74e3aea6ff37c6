"""Round aggregation: one strategy instance per collecting round, fed verified spooled updates.

The accumulators are rebuildable state: ``begin_round`` + re-folding every verified update of the
round from its spool file gives the same result as an uninterrupted run, so a restarted
coordinator (or one that lost its in-memory instance) never loses or double-counts an update.
Folding happens under a per-round lock; a round is closed (finish_round + store the version +
commit the round, in one transaction via ``store_model_version(extra=...)``) under that lock too.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from coordinator.clock import Clock
from coordinator.experiments import cancel_live_tasks
from coordinator.stages import advance_after_round, stage_row
from coordinator.strategies.base import RoundInputs, Strategy, UpdateInfo
from coordinator.strategies.registry import build_strategy
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import load_spec_json
from fedtune.tensorstream.encoder import manifest_for_file
from fedtune.tensorstream.manifest import Manifest
from storage import models
from storage.blobs import BlobStore
from storage.registry import record_event, store_model_version
from storage.uow import SqlUnitOfWork, UnitOfWorkFactory

log = logging.getLogger("fedtune.coordinator.aggregation")

FOLDABLE = ("verified", "folded")


@dataclass
class _ActiveRound:
    round_id: str
    strategy: Strategy
    inputs: RoundInputs
    folded: set[str] = field(default_factory=set)


def weighted_metric_means(updates: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Example-count weighted mean of each metric over the updates that reported it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for num_examples, metrics in updates:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * num_examples
            weights[key] = weights.get(key, 0.0) + num_examples
    return {key: sums[key] / weights[key] for key in sums if weights[key] > 0}


class RoundAggregator:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        blobs: BlobStore,
        data_dir: Path,
        clock: Clock,
        on_change: Callable[..., None] = lambda **_: None,
    ) -> None:
        self._uow_factory = uow_factory
        self._blobs = blobs
        self._data_dir = Path(data_dir)
        self._clock = clock
        self._on_change = on_change
        self._active: dict[str, _ActiveRound] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    # ----------------------------------------------------------------- paths
    def spool_dir(self, round_id: str) -> Path:
        return self._data_dir / "spool" / round_id

    def spool_path(self, round_id: str, task_id: str) -> Path:
        return self.spool_dir(round_id) / f"{task_id}.safetensors"

    def work_dir(self, round_id: str) -> Path:
        return self._data_dir / "work" / round_id

    def round_lock(self, round_id: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(round_id, threading.RLock())

    # ----------------------------------------------------------------- building
    def _build(self, round_id: str) -> _ActiveRound:
        with self._uow_factory() as uow:
            rnd = _get_round(uow, round_id)
            experiment = uow.session.get(models.Experiment, rnd.experiment_id)
            assert experiment is not None
            stage = load_spec_json(experiment.spec_json).stages[rnd.stage_index]
            base = uow.session.get(models.ModelVersion, rnd.base_version_id) if rnd.base_version_id else None
            if base is None:
                raise FedtuneError(ErrorCode.STORAGE, f"round {round_id} has no base model version")
            state = uow.session.scalars(
                select(models.StrategyState)
                .where(
                    models.StrategyState.experiment_id == rnd.experiment_id,
                    models.StrategyState.stage_index == rnd.stage_index,
                    models.StrategyState.round < rnd.round,
                )
                .order_by(models.StrategyState.round.desc())
                .limit(1)
            ).first()
            manifest = Manifest.from_json(base.manifest)
            base_digest, round_number = base.blob_digest, rnd.round
            state_digest = state.blob_digest if state is not None else None
            state_scalars = {k: float(v) for k, v in (state.scalars if state is not None else {}).items()}
        workdir = self.work_dir(round_id)
        workdir.mkdir(parents=True, exist_ok=True)
        inputs = RoundInputs(
            workdir=workdir,
            manifest=manifest,
            global_path=self._blobs.local_path(base_digest),
            state_path=self._blobs.local_path(state_digest) if state_digest else None,
            state_scalars=state_scalars,
            round=round_number,
        )
        strategy = build_strategy(stage.strategy.name, dict(stage.strategy.options))
        strategy.begin_round(inputs)
        return _ActiveRound(round_id, strategy, inputs)

    def _refold(self, active: _ActiveRound) -> None:
        """Fold every verified update of the round that the accumulator does not hold yet."""
        with self._uow_factory() as uow:
            rows = uow.session.execute(
                select(models.Update, models.Site.name)
                .join(models.Site, models.Site.id == models.Update.site_id)
                .where(models.Update.round_id == active.round_id, models.Update.state.in_(FOLDABLE))
                .order_by(models.Update.created_at, models.Update.id)
            ).all()
            todo = [
                (u.id, u.spool_path, u.num_examples, dict(u.metrics), site)
                for u, site in rows
                if u.id not in active.folded
            ]
        for update_id, path, num_examples, metrics, site in todo:
            self._fold_into(active, update_id, UpdateInfo(Path(path), num_examples, metrics, site))
        if len(todo) > 1:
            log.info(
                "accumulator caught up from spool", extra={"round": active.round_id, "updates": len(todo)}
            )

    def _fold_into(self, active: _ActiveRound, update_id: str, info: UpdateInfo) -> None:
        weight = active.strategy.weight(info, active.inputs)
        active.strategy.fold(info, weight)
        active.folded.add(update_id)
        with self._uow_factory() as uow:
            row = uow.session.get(models.Update, update_id)
            assert row is not None
            if row.state == "verified":
                row.state, row.folded_at = "folded", self._clock.now()
            row.weight = weight
            uow.commit()

    def _ensure(self, round_id: str) -> _ActiveRound:
        """The round's accumulator, built or caught up so it holds every verified update."""
        active = self._active.get(round_id)
        if active is None:
            active = self._build(round_id)
            self._active[round_id] = active
        try:
            self._refold(active)
        except Exception:
            self._active.pop(round_id, None)  # half-folded: rebuild from the spool next time
            raise
        return active

    # ----------------------------------------------------------------- public
    def begin(self, round_id: str) -> None:
        """Make sure the round has a live accumulator and is `collecting` (idempotent)."""
        with self.round_lock(round_id):
            self._ensure(round_id)
            with self._uow_factory() as uow:
                rnd = _get_round(uow, round_id)
                if rnd.state != "open":
                    return
                rnd.state = "collecting"
                sites = list(
                    uow.session.scalars(select(models.Task.site_id).where(models.Task.round_id == round_id))
                )
                uow.commit()
        self._on_change(sites=sites)  # their tasks are leasable now

    def fold(self, round_id: str, update_id: str) -> None:
        """Fold a verified update (idempotent). TASK_CLOSED if the round closed without it."""
        with self.round_lock(round_id):
            with self._uow_factory() as uow:
                rnd = _get_round(uow, round_id)
                update = uow.session.get(models.Update, update_id)
                if update is not None and update.state == "folded":
                    return
                if rnd.state not in ("open", "collecting"):
                    raise FedtuneError(
                        ErrorCode.TASK_CLOSED, f"round {rnd.round} is {rnd.state}; update not folded"
                    )
            self._ensure(round_id)
        self._on_change()

    def commit(self, round_id: str) -> str:
        """Close the round: finish the strategy, store the new version and commit the round at once."""
        with self.round_lock(round_id):
            with self._uow_factory() as uow:
                rnd = _get_round(uow, round_id)
                if rnd.state == "committed":
                    return rnd.model_version_id or ""
                if rnd.state not in ("collecting", "aggregating", "open"):
                    raise FedtuneError(ErrorCode.WRONG_STATE, f"round {round_id} is {rnd.state}")
                rnd.state = "aggregating"
                uow.commit()
            try:
                version_id = self._finish_and_store(round_id)
            except BaseException:
                # The round stays `aggregating` with its spool intact; a retry rebuilds the accumulator
                # from the spool (the strategy may be half-finished), and the work files go now: on a
                # full disk they hold the space the retry needs.
                self._active.pop(round_id, None)
                shutil.rmtree(self.work_dir(round_id), ignore_errors=True)
                raise
            self.discard(round_id)
        log.info("round committed", extra={"round": round_id, "version": version_id})
        self._on_change()
        return version_id

    def _finish_and_store(self, round_id: str) -> str:
        """finish_round, then the new version + the committed round in one transaction (round lock held)."""
        active = self._ensure(round_id)
        result = active.strategy.finish_round()
        state_digest = self._blobs.put_file(result.state_path) if result.state_path else None
        with self._uow_factory() as uow:
            plan = _commit_plan(uow, round_id, self._blobs)
        metrics = dict(plan.client_metrics)
        metrics.update({f"strategy.{k}": float(v) for k, v in result.metrics.items()})
        now = self._clock.now()

        def extra(uow: SqlUnitOfWork, version: models.ModelVersion) -> None:
            _apply_commit(uow, round_id, version, metrics, state_digest, dict(result.state_scalars), now)

        version = store_model_version(
            self._uow_factory,
            self._blobs,
            tensors_path=result.new_tensors_path,
            files=plan.files,
            experiment_id=plan.experiment_id,
            version=plan.next_version,
            parent_id=plan.base_version_id,
            stage_index=plan.stage_index,
            stage_name=plan.stage_name,
            round=plan.round,
            kind="adapter",
            manifest=manifest_for_file(result.new_tensors_path).to_json(),
            metrics=metrics,
            sites=plan.sites,
            num_examples=plan.num_examples,
            extra=extra,
        )
        return version.id

    def discard(self, round_id: str) -> None:
        """Forget a closed round: drop its accumulator and delete its spool and work folders."""
        with self.round_lock(round_id):
            self._active.pop(round_id, None)
            shutil.rmtree(self.spool_dir(round_id), ignore_errors=True)
            shutil.rmtree(self.work_dir(round_id), ignore_errors=True)

    def cleanup_closed_rounds(self) -> None:
        """At start: remove spool/work folders of rounds that are no longer open (crash leftovers)."""
        for parent in (self._data_dir / "spool", self._data_dir / "work"):
            if not parent.is_dir():
                continue
            with self._uow_factory() as uow:
                open_ids = set(
                    uow.session.scalars(
                        select(models.Round.id).where(
                            models.Round.state.in_(("open", "collecting", "aggregating"))
                        )
                    )
                )
            for child in parent.iterdir():
                if child.is_dir() and child.name not in open_ids and child.name != "init":
                    shutil.rmtree(child, ignore_errors=True)


@dataclass(frozen=True)
class _CommitPlan:
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


def _get_round(uow: SqlUnitOfWork, round_id: str) -> models.Round:
    rnd = uow.session.get(models.Round, round_id)
    if rnd is None:
        raise FedtuneError(ErrorCode.NOT_FOUND, f"no round {round_id!r}")
    return rnd


def _commit_plan(uow: SqlUnitOfWork, round_id: str, blobs: BlobStore) -> _CommitPlan:
    rnd = _get_round(uow, round_id)
    stage = uow.session.scalars(
        select(models.Stage).where(
            models.Stage.experiment_id == rnd.experiment_id, models.Stage.stage_index == rnd.stage_index
        )
    ).one()
    base = uow.session.get(models.ModelVersion, rnd.base_version_id) if rnd.base_version_id else None
    files: dict[str, bytes] = {}
    for name, digest in (base.files if base is not None else {}).items():
        with blobs.open(str(digest)) as handle:
            files[name] = handle.read()
    rows = uow.session.execute(
        select(models.Update, models.Site.name)
        .join(models.Site, models.Site.id == models.Update.site_id)
        .where(models.Update.round_id == round_id, models.Update.state.in_(FOLDABLE))
        .order_by(models.Site.name)
    ).all()
    top = uow.session.scalar(
        select(models.ModelVersion.version)
        .where(models.ModelVersion.experiment_id == rnd.experiment_id)
        .order_by(models.ModelVersion.version.desc())
        .limit(1)
    )
    return _CommitPlan(
        experiment_id=rnd.experiment_id,
        stage_index=rnd.stage_index,
        stage_name=stage.name,
        round=rnd.round,
        base_version_id=rnd.base_version_id,
        next_version=(top or 0) + 1,
        files=files,
        sites=[site for _, site in rows],
        num_examples=sum(u.num_examples for u, _ in rows),
        client_metrics=weighted_metric_means([(u.num_examples, dict(u.metrics)) for u, _ in rows]),
    )


def _apply_commit(
    uow: SqlUnitOfWork,
    round_id: str,
    version: models.ModelVersion,
    metrics: dict[str, float],
    state_digest: str | None,
    state_scalars: dict[str, float],
    now: float,
) -> None:
    """Everything that changes with the new version, in its transaction."""
    session = uow.session
    rnd = _get_round(uow, round_id)
    rnd.state, rnd.closed_at, rnd.metrics, rnd.model_version_id = "committed", now, metrics, version.id
    rnd.reason = ""  # a commit that waited on I/O said why in the reason; it is done now
    cancel_live_tasks(uow, round_id=round_id)
    session.add(
        models.StrategyState(
            experiment_id=rnd.experiment_id,
            stage_index=rnd.stage_index,
            round=rnd.round,
            blob_digest=state_digest,
            scalars=state_scalars,
        )
    )
    stage = stage_row(uow, rnd.experiment_id, rnd.stage_index)
    record_event(
        uow,
        "round.committed",
        f"{stage.name} round {rnd.round} committed as version {version.version}",
        rnd.experiment_id,
        {
            "round_id": rnd.id,
            "round": rnd.round,
            "stage": stage.name,
            "version_id": version.id,
            "sites": list(version.sites),
            "num_examples": version.num_examples,
        },
    )
    advance_after_round(uow, rnd, version.id, now)
