"""The round scheduler: a tick that moves every live experiment forward from what the DB says.

``tick()`` is idempotent and holds no state between calls beyond what is in SQL (plus the
aggregator's rebuildable accumulators), so a restarted coordinator continues where it was.
Per experiment: make sure the stage's initial version exists (an INIT task: version 0 for stage 0, and
a new one for the first stage after the global stages, built on the merged global base), then open
the next round of the current stage when none is open (unless paused), and close an open round when
every task has ended, or at its deadline (commit with >= min_sites updates, otherwise fail the round
and the experiment).
A personalize stage's round has PERSONALIZE tasks and no accumulator: it closes the same way,
counting reported results instead of updates, and stores per-site metrics but no version.
"""

from __future__ import annotations

import logging
import threading

from coordinator import lifecycle
from coordinator.aggregation import RoundAggregator
from coordinator.clock import Clock
from coordinator.commit_retry import CommitRetries, describe_error, is_transient_io_error
from coordinator.notify import Notifier
from coordinator.selection import select_sites
from coordinator.settings import CoordinatorSettings
from coordinator.stages import commit_personalize_round, stage_needs_init
from coordinator.waiting import announce_waiting, round_waiting_reason
from fedtune.errors import FedtuneError
from fedtune.spec import ExperimentSpec, load_spec_json
from storage.registry import latest_model_version, record_event
from storage.states import LIVE_TASK_STATES, OPEN_ROUND_STATES, RoundState, TaskState
from storage.uow import UowFactory

log = logging.getLogger("fedtune.coordinator.scheduler")


class Scheduler:
    def __init__(
        self,
        uow_factory: UowFactory,
        clock: Clock,
        settings: CoordinatorSettings,
        aggregator: RoundAggregator,
        notifier: Notifier,
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._settings = settings
        self._aggregator = aggregator
        self._notifier = notifier
        self._tick_lock = threading.Lock()
        self._commit_retries = CommitRetries(
            settings.commit_retry_initial_seconds, settings.commit_retry_max_seconds
        )

    # ----------------------------------------------------------------- loop
    def run(self, stop: threading.Event) -> None:
        """Tick every `scheduler_tick_seconds` or sooner when notified, until `stop` is set."""
        generation = self._notifier.generation
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            generation = self._notifier.wait(generation, self._settings.scheduler_tick_seconds)

    def tick(self) -> None:
        with self._tick_lock:
            self._mark_offline_workers()
            self._expire_leases()
            with self._uow_factory() as uow:
                live = uow.experiments.live_ids()
            for experiment_id in live:
                try:
                    self._advance(experiment_id)
                except Exception:
                    log.exception("advancing experiment failed", extra={"experiment": experiment_id})

    # ----------------------------------------------------------------- housekeeping
    def _mark_offline_workers(self) -> None:
        cutoff = self._clock.now() - self._settings.worker_offline_after_seconds
        with self._uow_factory() as uow:
            for worker in uow.workers.stale(cutoff):
                lifecycle.worker_offline(uow, worker, f"worker {worker.id} went offline")
            uow.commit()

    def _expire_leases(self) -> None:
        now = self._clock.now()
        with self._uow_factory() as uow:
            for task in uow.tasks.expired_leases(now):
                lifecycle.release_task(uow, task, now, expired=True)
            uow.commit()

    # ----------------------------------------------------------------- experiments
    def _advance(self, experiment_id: str) -> None:
        with self._uow_factory() as uow:
            experiment = uow.experiments.get(experiment_id)
            assert experiment is not None
            spec = load_spec_json(experiment.spec_json)
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
            if spec.stages[stage_index].kind == "personalize":
                self._drive_personalize_round(latest_id)
            else:
                self._drive_round(latest_id)
        elif (
            latest_state in (None, RoundState.COMMITTED)
            and state == "running"
            and stage_index < len(spec.stages)
        ):
            if latest_number < spec.stages[stage_index].rounds:
                self._open_round(experiment_id, spec, stage_index, latest_number + 1)

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
        with self._uow_factory() as uow:
            online = uow.sites.online_names(now, self._settings.worker_offline_after_seconds)
            chosen = select_sites(online, stage.selection, spec.seed, number)
            if chosen is None:  # fewer than min_sites online: wait, and say why (once)
                what = f"{stage.stage_name} round {number}"
                if announce_waiting(
                    uow, experiment_id, round_waiting_reason(uow, stage.selection, online, what)
                ):
                    uow.commit()
                return
            base = latest_model_version(uow, experiment_id)
            experiment = uow.experiments.get(experiment_id)
            assert base is not None and experiment is not None
            rnd = lifecycle.open_round(
                uow,
                experiment=experiment,
                stage=uow.stages.get(experiment_id, stage_index),
                number=number,
                base_version_id=base.id,
                sites=uow.sites.by_names(chosen),
                min_updates=stage.selection.min_sites,
                deadline=now + stage.deadline_seconds,
                now=now,
            )
            uow.commit()
            round_id = rnd.id
        log.info(
            "round opened", extra={"experiment": experiment_id, "round": number, "sites": sorted(chosen)}
        )
        if stage.kind == "personalize":
            self._drive_personalize_round(round_id)
        else:
            self._drive_round(round_id)

    def _drive_personalize_round(self, round_id: str) -> None:
        """Close a personalize round when every task ended or at its deadline; no aggregation."""
        now = self._clock.now()
        with self._uow_factory() as uow:
            rnd = uow.rounds.get(round_id)
            assert rnd is not None
            if rnd.state not in OPEN_ROUND_STATES:
                return
            states = uow.tasks.states_in_round(round_id)
            done = sum(1 for s in states if s == TaskState.DONE)
            all_ended = all(s not in LIVE_TASK_STATES for s in states)
            if not (all_ended or now >= rnd.deadline_at):
                return
            if done < rnd.min_updates:
                why = "every task ended" if all_ended else "deadline passed"
                min_updates = rnd.min_updates
            else:
                commit_personalize_round(uow, rnd, now)
                uow.commit()
                log.info("personalize round closed", extra={"round": round_id, "sites_done": done})
                return
        self.fail_round(
            round_id, f"{why} with {done} personalized site(s); the stage needs min_sites={min_updates}"
        )

    def _drive_round(self, round_id: str) -> None:
        if not self._commit_retries.due(round_id, self._clock.now()):
            return  # waiting after an I/O failure (see _wait_after_io_failure)
        try:
            self._aggregator.begin(round_id)
        except Exception as err:
            if not self._wait_after_io_failure(round_id, "start aggregation", err):
                self.fail_round(round_id, f"could not start aggregation: {_message(err)}")
            return
        now = self._clock.now()
        with self._uow_factory() as uow:
            rnd = uow.rounds.get(round_id)
            assert rnd is not None
            if rnd.state not in OPEN_ROUND_STATES:
                return
            states = uow.tasks.states_in_round(round_id)
            received = uow.rounds.count_foldable(round_id)
            min_updates, deadline = rnd.min_updates, rnd.deadline_at
            aggregating = rnd.state == RoundState.AGGREGATING
        all_ended = all(s not in LIVE_TASK_STATES for s in states)
        if not (aggregating or all_ended or now >= deadline):
            return
        if received < min_updates and not aggregating:
            why = "every task ended" if all_ended else "deadline passed"
            self.fail_round(
                round_id, f"{why} with {received} update(s); the stage needs min_sites={min_updates}"
            )
            return
        try:
            self._aggregator.commit(round_id)
        except Exception as err:
            if not self._wait_after_io_failure(round_id, "commit", err):
                self.fail_round(round_id, f"aggregation failed: {_message(err)}")
            return
        attempts = self._commit_retries.forget(round_id)
        if attempts:
            log.info("round committed after waiting on I/O", extra={"round": round_id, "failures": attempts})

    # ----------------------------------------------------------------- commit retry
    def _wait_after_io_failure(self, round_id: str, action: str, err: Exception) -> bool:
        """A transient I/O failure keeps the round (and its spooled updates) for a later attempt.

        Returns False when `err` is not transient (the caller fails the round). Otherwise the round
        waits with exponential backoff, and says why: its reason (``fedtune admin rounds``), a
        ``round.commit_retry`` event (first failure, a new error, then every few minutes) and a log line.
        """
        if not is_transient_io_error(err):
            self._commit_retries.forget(round_id)
            if not isinstance(err, FedtuneError):
                log.error("round %s: %s failed", round_id, action, exc_info=err)
            return False
        now = self._clock.now()
        error = describe_error(err)
        decision = self._commit_retries.failed(round_id, now, error)
        reason = (
            f"waiting to {action}: {error}; attempt {decision.attempt} failed, "
            f"next in {decision.delay_text} (free space or fix the storage; the updates are kept)"
        )
        log.warning(
            "round %s: %s failed on I/O (%s); retrying in %.1f s (attempt %d)",
            round_id,
            action,
            error,
            decision.delay_seconds,
            decision.attempt,
        )
        try:
            with self._uow_factory() as uow:
                rnd = uow.rounds.get(round_id)
                if rnd is None or rnd.state not in OPEN_ROUND_STATES:
                    return True
                rnd.reason = reason
                if decision.announce:
                    record_event(
                        uow,
                        "round.commit_retry",
                        f"round {rnd.round} could not {action}: {error}; retrying in "
                        f"{decision.delay_text} (attempt {decision.attempt})",
                        rnd.experiment_id,
                        {
                            "round_id": round_id,
                            "round": rnd.round,
                            "action": action,
                            "attempt": decision.attempt,
                            "retry_in_seconds": decision.delay_seconds,
                            "error": error,
                        },
                    )
                uow.commit()
        except Exception:  # the database may sit on the full disk too; the log line above says it
            log.warning("could not record why round %s waits", round_id, exc_info=True)
        return True

    def fail_round(self, round_id: str, reason: str) -> None:
        """Fail the round and its experiment (a round that cannot close fails the experiment)."""
        now = self._clock.now()
        with self._uow_factory() as uow:
            rnd = uow.rounds.get(round_id)
            assert rnd is not None
            if not lifecycle.fail_round(uow, rnd, reason, now):
                return
            lifecycle.fail_experiment(uow, rnd.experiment_id, f"round {rnd.round} failed: {reason}", now)
            uow.commit()
        self._commit_retries.forget(round_id)
        log.warning("round failed", extra={"round": round_id, "reason": reason})
        self._aggregator.discard(round_id)


def _message(err: Exception) -> str:
    """A FedtuneError's public message, or the type and text of an unexpected exception (bounded)."""
    if isinstance(err, FedtuneError):
        return err.message
    return f"{type(err).__name__}: {describe_error(err)}"
