"""The round scheduler: a tick that moves every live experiment forward from what the DB says.

``tick()`` is idempotent and holds no state between calls beyond what is in SQL (plus the
aggregator's rebuildable accumulators), so a restarted coordinator continues where it was.
Per experiment: make sure the stage's initial version exists (an INIT task: version 0 for stage 0, and
a new one for the first stage after the global stages, built on the merged global base), then open
the next round of the current stage when none is open (unless paused), and close an open round when
every task has ended, or at its deadline (commit with >= min_sites updates, otherwise fail the round
and the experiment). Driving and closing a round (a commit can take long: the strategy's finish, a blob
write, the SQL commit) runs on the round closer's small pool (``coordinator/round_closer.py``), so the
scheduler thread goes on expiring leases, marking workers offline and moving other experiments.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, wait

from coordinator import lifecycle
from coordinator.aggregation import RoundAggregator
from coordinator.clock import Clock
from coordinator.collector import StorageCollector
from coordinator.notify import Notifier
from coordinator.privacy_budget import NOISE_MULTIPLIER, SAMPLING_RATE, next_round_refusal
from coordinator.round_closer import RoundCloser
from coordinator.secagg.phases import open_secagg_round
from coordinator.selection import eligible_sites, select_sites
from coordinator.settings import CoordinatorSettings
from coordinator.stages import stage_needs_init
from coordinator.waiting import announce_waiting, round_waiting_reason
from fedtune.spec import SECURE_AGGREGATION_MIN_SITES, ExperimentSpec, load_spec_json
from storage.registry import latest_model_version, record_event
from storage.states import LIVE_TASK_STATES, OPEN_ROUND_STATES, RoundState, TaskState
from storage.uow import UowFactory

log = logging.getLogger("fedtune.coordinator.scheduler")
# The least time between two passes: news that arrives meanwhile (a thousand sites' leases and
# updates each record an event, and each event wakes the scheduler) is handled by one pass, so the
# passes' cost no longer grows with the rate of events (docs/decisions.md 42).
MIN_PASS_SECONDS = 0.25


class Scheduler:
    def __init__(
        self,
        uow_factory: UowFactory,
        clock: Clock,
        settings: CoordinatorSettings,
        aggregator: RoundAggregator,
        notifier: Notifier,
        collector: StorageCollector | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._settings = settings
        self._aggregator = aggregator
        self._notifier = notifier
        self._tick_lock = threading.Lock()
        self._specs: dict[str, tuple[str, ExperimentSpec]] = {}
        self._closer = RoundCloser(uow_factory, clock, settings, aggregator)
        self._started: list[Future[None]] = []  # round jobs of the current pass
        self._collector = collector
        self._next_gc = clock.now() + settings.gc_interval_seconds  # periodic GC (0 = off)

    # ----------------------------------------------------------------- loop
    def run(self, stop: threading.Event) -> None:
        """Pass every `scheduler_tick_seconds` or sooner when notified, until `stop` is set. A pass never
        waits for a round's commit: those run on the closer's pool while the next passes go on."""
        generation = self._notifier.generation
        settle = min(MIN_PASS_SECONDS, self._settings.scheduler_tick_seconds)
        while not stop.is_set():
            try:
                self._pass()
            except Exception:
                log.exception("scheduler tick failed")
            if stop.wait(settle):
                break
            generation = self._notifier.wait(generation, self._settings.scheduler_tick_seconds - settle)

    def tick(self) -> None:
        """One pass, then wait for the round jobs it started (tests and scripts step the scheduler so)."""
        wait(self._pass())

    def close(self) -> None:
        """Let running round jobs finish and stop the pool (the server calls this after the loop ended)."""
        self._closer.close()

    def _pass(self) -> list[Future[None]]:
        with self._tick_lock:
            self._started = []
            self._mark_offline_workers()
            self._expire_leases()
            self._maybe_collect()
            with self._uow_factory.reader() as uow:
                live = uow.experiments.live_ids()
            for experiment_id in live:
                try:
                    self._advance(experiment_id)
                except Exception:
                    log.exception("advancing experiment failed", extra={"experiment": experiment_id})
            return self._started

    def _drive(self, round_id: str, *, personalize: bool) -> None:
        job = self._closer.submit(round_id, personalize=personalize)
        if job is not None:
            self._started.append(job)

    # ----------------------------------------------------------------- housekeeping
    def _mark_offline_workers(self) -> None:
        cutoff = self._clock.now() - self._settings.worker_offline_after_seconds
        with self._uow_factory.reader() as uow:  # read first: most passes find no one (decision 42)
            if not uow.workers.stale(cutoff):
                return
        with self._uow_factory() as uow:
            for worker in uow.workers.stale(cutoff):
                lifecycle.worker_offline(uow, worker, f"worker {worker.id} went offline")
            uow.commit()

    def _maybe_collect(self) -> None:
        """Every `gc_interval_seconds`, a garbage collection on the collector's thread (decision 33)."""
        interval, now = self._settings.gc_interval_seconds, self._clock.now()
        if self._collector is None or interval <= 0 or now < self._next_gc:
            return
        self._next_gc = now + interval
        self._collector.submit_periodic()

    def _expire_leases(self) -> None:
        now = self._clock.now()
        with self._uow_factory.reader() as uow:  # read first: most passes find nothing
            if not uow.tasks.expired_leases(now):
                return
        with self._uow_factory() as uow:
            for task in uow.tasks.expired_leases(now):
                lifecycle.release_task(uow, task, now, expired=True)
            uow.commit()

    # ----------------------------------------------------------------- experiments
    def _advance(self, experiment_id: str) -> None:
        with self._uow_factory.reader() as uow:
            experiment = uow.experiments.get(experiment_id)
            assert experiment is not None
            spec = self._spec(experiment_id, experiment.spec_json)
            state, stage_index = experiment.state, experiment.current_stage_index
            if stage_index < len(spec.stages) and stage_needs_init(spec, stage_index):
                has_initial = latest_model_version(uow, experiment_id, stage_index=stage_index) is not None
            else:
                has_initial = latest_model_version(uow, experiment_id) is not None
            latest = uow.rounds.latest(experiment_id, stage_index)
            latest_state = latest.state if latest is not None else None
            latest_id, latest_number = (latest.id, latest.round) if latest is not None else ("", 0)
        if not has_initial:
            self._ensure_init_task(experiment_id, spec, stage_index)
        elif latest_state in OPEN_ROUND_STATES:
            self._drive(latest_id, personalize=spec.stages[stage_index].kind == "personalize")
        elif (
            latest_state in (None, RoundState.COMMITTED)
            and state == "running"
            and stage_index < len(spec.stages)
        ):
            if latest_number < spec.stages[stage_index].rounds:
                self._open_round(experiment_id, spec, stage_index, latest_number + 1)

    def _spec(self, experiment_id: str, spec_json: str) -> ExperimentSpec:
        """The experiment's parsed spec, parsed once (a spec never changes after submission)."""
        cached = self._specs.get(experiment_id)
        if cached is None or cached[0] != spec_json:
            cached = self._specs[experiment_id] = (spec_json, load_spec_json(spec_json))
        return cached[1]

    def _ensure_init_task(self, experiment_id: str, spec: ExperimentSpec, stage_index: int) -> None:
        """One INIT task for the stage (stage 0, or the first stage after the global stages)."""
        now = self._clock.now()
        stage = spec.stages[stage_index]
        with self._uow_factory() as uow:
            tasks = uow.tasks.init_tasks(experiment_id, stage_index)
            if any(t.state in LIVE_TASK_STATES or t.state == TaskState.DONE for t in tasks):
                return
            failed = [t for t in tasks if t.state == TaskState.FAILED]
            if failed:
                reason = f"initialisation failed: {failed[-1].error or 'no reason'}"
                lifecycle.fail_experiment(uow, experiment_id, reason, now)
                uow.commit()
                return
            online = uow.sites.online_names(now, self._settings.worker_offline_after_seconds)
            if stage.selection.sites is None:
                candidates = online
            else:  # an online listed site, else any listed site (its task waits for it)
                candidates = [name for name in online if name in stage.selection.sites]
                candidates = candidates or list(stage.selection.sites)
            sites = [uow.sites.by_name(name) for name in candidates]
            site = next((s for s in sites if s is not None and s.revoked_at is None), None)
            if site is None:  # no site available yet: wait, and say why (once)
                one_site = stage.selection.model_copy(update={"min_sites": 1})
                what = f"the initial version of {stage.stage_name}"
                if announce_waiting(uow, experiment_id, round_waiting_reason(uow, one_site, online, what)):
                    uow.commit()
                return
            task = lifecycle.create_task(
                uow,
                experiment_id=experiment_id,
                site_id=site.id,
                kind="init",
                stage_index=stage_index,
                deadline=now + stage.deadline_seconds,
                now=now,
            )
            record_event(
                uow,
                "task.created",
                f"init task for site {site.name} ({stage.stage_name})",
                experiment_id,
                {"task_id": task.id, "site": site.name, "kind": "init", "stage_index": stage_index},
            )
            uow.commit()

    def _open_round(self, experiment_id: str, spec: ExperimentSpec, stage_index: int, number: int) -> None:
        stage = spec.stages[stage_index]
        now = self._clock.now()
        secure = spec.privacy.secure_aggregation and stage.kind != "personalize"
        selection = stage.selection
        if secure:  # a secure sum needs at least 3 sites (docs/privacy.md)
            wanted = max(selection.min_sites, SECURE_AGGREGATION_MIN_SITES)
            selection = selection.model_copy(update={"min_sites": wanted})
        with self._uow_factory() as uow:
            online = uow.sites.online_names(now, self._settings.worker_offline_after_seconds)
            chosen = select_sites(online, selection, spec.seed, number)
            if chosen is None:  # fewer than min_sites online: wait, and say why (once)
                what = f"{stage.stage_name} round {number}"
                if announce_waiting(uow, experiment_id, round_waiting_reason(uow, selection, online, what)):
                    uow.commit()
                return
            base = latest_model_version(uow, experiment_id)
            experiment = uow.experiments.get(experiment_id)
            assert base is not None and experiment is not None
            accounted = spec.privacy.dp is not None and stage.kind != "personalize"
            rate = len(chosen) / max(len(eligible_sites(online, stage.selection)), 1)
            refusal = next_round_refusal(uow, experiment_id, spec, chosen, rate) if accounted else None
            if refusal is not None:  # the budget is spent: end cleanly, say why (decision 36)
                lifecycle.end_on_privacy_budget(uow, experiment, refusal, base.id, now)
                uow.commit()
                log.info("privacy budget spent: %s", refusal, extra={"experiment": experiment_id})
                return
            sites = uow.sites.by_names(chosen)
            deadline = now + stage.deadline_seconds
            rnd = lifecycle.open_round(
                uow,
                experiment=experiment,
                stage=uow.stages.get(experiment_id, stage_index),
                number=number,
                base_version_id=base.id,
                sites=sites,
                min_updates=selection.min_sites,
                deadline=deadline,
                now=now,
                secure_aggregation=secure,
            )
            if accounted and spec.privacy.dp is not None and spec.privacy.dp.level == "site":
                rnd.metrics = {NOISE_MULTIPLIER: spec.privacy.dp.noise_multiplier, SAMPLING_RATE: rate}
            if secure:
                open_secagg_round(uow, rnd, sites, deadline, now)
            uow.commit()
            round_id = rnd.id
        log.info(
            "round opened", extra={"experiment": experiment_id, "round": number, "sites": sorted(chosen)}
        )
        self._drive(round_id, personalize=stage.kind == "personalize")
