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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator import lifecycle
from coordinator.clock import Clock
from coordinator.privacy_budget import round_privacy_metrics
from coordinator.round_commit import apply_commit, commit_plan, get_round, version_manifest
from coordinator.secagg.masked_sum import MaskedSumStrategy, prepare_unmasking, quantization_for
from coordinator.strategies.base import RoundInputs, Strategy, UpdateInfo
from coordinator.strategies.registry import build_strategy
from fedtune.dp_mechanism import round_noise
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import load_spec_json
from fedtune.tensorstream.manifest import Manifest
from storage import models
from storage.blobs import BlobStore
from storage.registry import store_model_version
from storage.states import OPEN_ROUND_STATES, RoundState
from storage.uow import UnitOfWork, UowFactory

if TYPE_CHECKING:  # coordinator.metrics imports this module's callers
    from coordinator.metrics import CoordinatorMetrics

log = logging.getLogger("fedtune.coordinator.aggregation")


@dataclass
class _ActiveRound:
    round_id: str
    strategy: Strategy
    inputs: RoundInputs
    folded: set[str] = field(default_factory=set)


class RoundAggregator:
    def __init__(
        self,
        uow_factory: UowFactory,
        blobs: BlobStore,
        data_dir: Path,
        clock: Clock,
        *,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self._blobs = blobs
        self._data_dir = Path(data_dir)
        self._clock = clock
        self._metrics = metrics  # fold and commit durations (None: not measured)
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
            rnd = get_round(uow, round_id)
            experiment = uow.experiments.get(rnd.experiment_id)
            assert experiment is not None
            spec = load_spec_json(experiment.spec_json)
            stage = spec.stages[rnd.stage_index]
            noise = round_noise(spec.privacy, len(rnd.selected_sites))
            base = uow.versions.get(rnd.base_version_id) if rnd.base_version_id else None
            if base is None:
                raise FedtuneError(ErrorCode.STORAGE, f"round {round_id} has no base model version")
            state = uow.versions.strategy_state_before(rnd.experiment_id, rnd.stage_index, rnd.round)
            manifest = Manifest.from_json(base.manifest)
            secagg = uow.secagg.round(round_id)
            secagg_sites = secagg.num_sites if secagg is not None else 0
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
            uniform_weights=noise is not None,
            sum_noise_std=noise.sum_std if noise is not None else 0.0,
        )
        strategy = build_strategy(stage.strategy.name, dict(stage.strategy.options))
        if secagg_sites:  # the updates arrive masked: fold their modular sum, unmask at commit
            strategy = MaskedSumStrategy(strategy, quantization_for(spec.privacy.secagg, secagg_sites))
        strategy.begin_round(inputs)
        return _ActiveRound(round_id, strategy, inputs)

    def _refold(self, active: _ActiveRound) -> None:
        """Fold every verified update of the round that the accumulator does not hold yet."""
        with self._uow_factory() as uow:
            todo = [
                (u.id, u.spool_path, u.num_examples, dict(u.metrics), site)
                for u, site in uow.rounds.foldable_updates(active.round_id)
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
            row = uow.updates.get(update_id)
            assert row is not None
            lifecycle.mark_folded(row, weight, self._clock.now())
            uow.commit()

    def _ensure(self, round_id: str, *, catch_up: bool = True) -> _ActiveRound:
        """The round's accumulator, built or caught up so it holds every verified update.

        A new accumulator always catches up from the spool (a restart, or one dropped after a failure).
        A live one is in step with the registry: every foldable row is written under the round lock
        right after ``fold_new`` folded it, and a failed write drops the accumulator (``forget``). So
        ``fold_new`` skips the catch-up (it read every row of the round for every update: quadratic in
        the sites, docs/decisions.md 42); ``begin`` and the commit still do it, once per round."""
        active = self._active.get(round_id)
        if active is None:
            active = self._build(round_id)
            self._active[round_id] = active
            catch_up = True
        if not catch_up:
            return active
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
            self._ensure(round_id, catch_up=False)  # a new accumulator catches up; a live one is in step
            with self._uow_factory.reader() as uow:  # every pass calls this: read first
                if get_round(uow, round_id).state != RoundState.OPEN:
                    return
            with self._uow_factory() as uow:
                rnd = get_round(uow, round_id)
                if rnd.state != RoundState.OPEN:
                    return
                lifecycle.start_collecting(uow, rnd)  # their tasks are leasable now
                uow.commit()

    def fold_new(self, round_id: str, update_id: str, info: UpdateInfo) -> float:
        """Weigh and fold an update that has no row yet; returns its weight. Call holding the round lock.

        The strategy judges the update here, before anything about it is committed: a FedtuneError from
        its ``weight`` or ``fold`` is a refusal of this update only (the caller records it as rejected);
        the accumulator is left without it (dropped and rebuilt from the spool if ``fold`` had started).
        Once the caller has committed the update's row, the accumulator and the registry agree; if that
        commit fails, the caller calls ``forget`` so the next use rebuilds from what was committed."""
        active = self._ensure(round_id, catch_up=False)
        started = time.perf_counter()
        weight = active.strategy.weight(info, active.inputs)  # refuses before touching the accumulator
        try:
            active.strategy.fold(info, weight)
        except BaseException:
            self._active.pop(round_id, None)  # half-folded: rebuild from the spool next time
            raise
        active.folded.add(update_id)
        if self._metrics is not None:
            self._metrics.fold_seconds.observe(time.perf_counter() - started)
        return weight

    def forget(self, round_id: str) -> None:
        """Drop the round's accumulator (it holds an update whose row was not committed)."""
        self._active.pop(round_id, None)

    def commit(self, round_id: str) -> str:
        """Close the round: finish the strategy, store the new version and commit the round at once."""
        with self.round_lock(round_id):
            with self._uow_factory() as uow:
                rnd = get_round(uow, round_id)
                if rnd.state == RoundState.COMMITTED:
                    return rnd.model_version_id or ""
                if rnd.state not in OPEN_ROUND_STATES:
                    raise FedtuneError(ErrorCode.WRONG_STATE, f"round {round_id} is {rnd.state}")
                lifecycle.begin_aggregating(uow, rnd)
                uow.commit()
            started = time.perf_counter()
            try:
                version_id = self._finish_and_store(round_id)
            except BaseException:
                # The round stays `aggregating` with its spool intact; a retry rebuilds the accumulator
                # from the spool (the strategy may be half-finished), and the work files go now: on a
                # full disk they hold the space the retry needs.
                self._active.pop(round_id, None)
                shutil.rmtree(self.work_dir(round_id), ignore_errors=True)
                raise
            if self._metrics is not None:
                self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self.discard(round_id)
        log.info("round committed", extra={"round": round_id, "version": version_id})
        return version_id

    def _finish_and_store(self, round_id: str) -> str:
        """finish_round, then the new version + the committed round in one transaction (round lock held)."""
        active = self._ensure(round_id)
        if isinstance(active.strategy, MaskedSumStrategy):
            prepare_unmasking(active.strategy, self._uow_factory, round_id)
        result = active.strategy.finish_round()
        # The work folder's files are the round's own: moved into the blob store, not copied (a retry
        # after a failed commit rebuilds them from the spool, decision 26).
        state_digest = self._blobs.put_file(result.state_path, move=True) if result.state_path else None
        digests = result.new_tensors_digests
        manifest = version_manifest(result)
        with self._uow_factory() as uow:
            plan = commit_plan(uow, round_id, self._blobs)
            rnd = get_round(uow, round_id)
            experiment = uow.experiments.get(rnd.experiment_id)
            assert experiment is not None
            privacy = round_privacy_metrics(uow, rnd, load_spec_json(experiment.spec_json))
        metrics = dict(plan.client_metrics)
        metrics.update({f"strategy.{k}": float(v) for k, v in result.metrics.items()})
        metrics.update(privacy)
        now = self._clock.now()

        def extra(uow: UnitOfWork, version: models.ModelVersion) -> None:
            apply_commit(uow, round_id, version, metrics, state_digest, dict(result.state_scalars), now)

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
            manifest=manifest.to_json(),
            metrics=metrics,
            sites=plan.sites,
            num_examples=plan.num_examples,
            extra=extra,
            move=True,
            tensors_digest=digests.file if digests is not None else None,
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
                open_ids = uow.rounds.open_ids()
            for child in parent.iterdir():
                if child.is_dir() and child.name not in open_ids and child.name != "init":
                    shutil.rmtree(child, ignore_errors=True)
