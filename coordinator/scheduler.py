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

from sqlalchemy import func, select, update

from coordinator.aggregation import FOLDABLE, RoundAggregator
from coordinator.clock import Clock
from coordinator.commit_retry import CommitRetries, describe_error, is_transient_io_error
from coordinator.experiments import LIVE_TASK_STATES, OPEN_ROUND_STATES, cancel_live_tasks
from coordinator.notify import Notifier
from coordinator.selection import select_sites
from coordinator.settings import CoordinatorSettings
from coordinator.stages import commit_personalize_round, stage_needs_init
from coordinator.waiting import announce_waiting, round_waiting_reason
from fedtune.errors import FedtuneError
from fedtune.sanitize import ERROR_TEXT_LIMIT, public_text
from fedtune.spec import ExperimentSpec, load_spec_json
from storage import models
from storage.registry import latest_model_version, record_event
from storage.uow import SqlUnitOfWork, UnitOfWorkFactory

log = logging.getLogger("fedtune.coordinator.scheduler")


def online_site_names(uow: SqlUnitOfWork, now: float, offline_after: float) -> list[str]:
    """Sites with a live worker, in order of their oldest live worker's registration."""
    rows = uow.session.execute(
        select(models.Site.name, func.min(models.Worker.registered_at))
        .join(models.Worker, models.Worker.site_id == models.Site.id)
        .where(
            models.Worker.state == "online",
            models.Worker.last_seen_at >= now - offline_after,
            models.Site.revoked_at.is_(None),
        )
        .group_by(models.Site.name)
        .order_by(func.min(models.Worker.registered_at), models.Site.name)
    ).all()
    return [name for name, _ in rows]


class Scheduler:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
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
                live = list(
                    uow.session.scalars(
                        select(models.Experiment.id)
                        .where(models.Experiment.state.in_(("running", "paused")))
                        .order_by(models.Experiment.created_at)
                    )
                )
            for experiment_id in live:
                try:
                    self._advance(experiment_id)
                except Exception:
                    log.exception("advancing experiment failed", extra={"experiment": experiment_id})

    # ----------------------------------------------------------------- housekeeping
    def _mark_offline_workers(self) -> None:
        now = self._clock.now()
        with self._uow_factory() as uow:
            stale = uow.session.scalars(
                select(models.Worker).where(
                    models.Worker.state == "online",
                    models.Worker.last_seen_at < now - self._settings.worker_offline_after_seconds,
                )
            ).all()
            for worker in stale:
                worker.state = "offline"
                record_event(
                    uow, "worker.offline", f"worker {worker.id} went offline", data={"worker_id": worker.id}
                )
            uow.commit()

    def _expire_leases(self) -> None:
        now = self._clock.now()
        with self._uow_factory() as uow:
            expired = uow.session.scalars(
                select(models.Task).where(models.Task.state == "leased", models.Task.lease_expires_at < now)
            ).all()
            for task in expired:
                record_event(
                    uow,
                    "task.expired",
                    f"lease of task {task.id} expired; back to pending",
                    task.experiment_id,
                    {"task_id": task.id, "worker_id": task.worker_id},
                )
                task.state, task.worker_id, task.lease_expires_at = "pending", None, None
            sites = [task.site_id for task in expired]
            uow.commit()
        if expired:
            self._notifier.notify(sites=sites)

    # ----------------------------------------------------------------- experiments
    def _advance(self, experiment_id: str) -> None:
        with self._uow_factory() as uow:
            experiment = uow.session.get(models.Experiment, experiment_id)
            assert experiment is not None
            spec = load_spec_json(experiment.spec_json)
            state, stage_index = experiment.state, experiment.current_stage_index
            if stage_index < len(spec.stages) and stage_needs_init(spec, stage_index):
                has_initial = latest_model_version(uow, experiment_id, stage_index=stage_index) is not None
            else:
                has_initial = latest_model_version(uow, experiment_id) is not None
            latest = uow.session.scalars(
                select(models.Round)
                .where(models.Round.experiment_id == experiment_id, models.Round.stage_index == stage_index)
                .order_by(models.Round.round.desc())
                .limit(1)
            ).first()
            latest_state = latest.state if latest is not None else None
            latest_id, latest_number = (latest.id, latest.round) if latest is not None else ("", 0)
        if not has_initial:
            self._ensure_init_task(experiment_id, spec, stage_index)
        elif latest_state in OPEN_ROUND_STATES:
            if spec.stages[stage_index].kind == "personalize":
                self._drive_personalize_round(latest_id)
            else:
                self._drive_round(latest_id)
        elif latest_state in (None, "committed") and state == "running" and stage_index < len(spec.stages):
            if latest_number < spec.stages[stage_index].rounds:
                self._open_round(experiment_id, spec, stage_index, latest_number + 1)

    def _ensure_init_task(self, experiment_id: str, spec: ExperimentSpec, stage_index: int) -> None:
        """One INIT task for the stage (stage 0, or the first stage after the global stages)."""
        now = self._clock.now()
        with self._uow_factory() as uow:
            tasks = uow.session.scalars(
                select(models.Task).where(
                    models.Task.experiment_id == experiment_id,
                    models.Task.kind == "init",
                    models.Task.stage_index == stage_index,
                )
            ).all()
            if any(t.state in LIVE_TASK_STATES or t.state == "done" for t in tasks):
                return
            failed = [t for t in tasks if t.state == "failed"]
            if failed:
                self._fail_experiment(
                    uow, experiment_id, f"initialisation failed: {failed[-1].error or 'no reason'}"
                )
                uow.commit()
                return
            selection = spec.stages[stage_index].selection
            online = online_site_names(uow, now, self._settings.worker_offline_after_seconds)
            if selection.sites is None:
                candidates = online
            else:  # an online listed site, else any listed site (its task waits for it)
                candidates = [name for name in online if name in selection.sites] or list(selection.sites)
            site = None
            for name in candidates:
                site = uow.session.scalars(
                    select(models.Site).where(models.Site.name == name, models.Site.revoked_at.is_(None))
                ).first()
                if site is not None:
                    break
            if site is None:  # no site available yet: wait, and say why (once)
                one_site = selection.model_copy(update={"min_sites": 1})
                what = f"the initial version of {spec.stages[stage_index].stage_name}"
                if announce_waiting(uow, experiment_id, round_waiting_reason(uow, one_site, online, what)):
                    uow.commit()
                return
            task = models.Task(
                id=models.new_id("task"),
                experiment_id=experiment_id,
                round_id=None,
                site_id=site.id,
                kind="init",
                stage_index=stage_index,
                state="pending",
                deadline_at=now + spec.stages[stage_index].deadline_seconds,
                created_at=now,
                updated_at=now,
            )
            uow.session.add(task)
            record_event(
                uow,
                "task.created",
                f"init task for site {site.name} ({spec.stages[stage_index].stage_name})",
                experiment_id,
                {"task_id": task.id, "site": site.name, "kind": "init", "stage_index": stage_index},
            )
            uow.commit()
            site_id = site.id
        self._notifier.notify(sites=[site_id])

    def _open_round(self, experiment_id: str, spec: ExperimentSpec, stage_index: int, number: int) -> None:
        stage = spec.stages[stage_index]
        personalize = stage.kind == "personalize"
        now = self._clock.now()
        with self._uow_factory() as uow:
            online = online_site_names(uow, now, self._settings.worker_offline_after_seconds)
            chosen = select_sites(online, stage.selection, spec.seed, number)
            if chosen is None:  # fewer than min_sites online: wait, and say why (once)
                what = f"{stage.stage_name} round {number}"
                if announce_waiting(
                    uow, experiment_id, round_waiting_reason(uow, stage.selection, online, what)
                ):
                    uow.commit()
                return
            base = latest_model_version(uow, experiment_id)
            assert base is not None
            sites = uow.session.scalars(select(models.Site).where(models.Site.name.in_(chosen))).all()
            deadline = now + stage.deadline_seconds
            rnd = models.Round(
                id=models.new_id("round"),
                experiment_id=experiment_id,
                stage_index=stage_index,
                round=number,
                # personalize rounds have no accumulator to start: they collect right away
                state="collecting" if personalize else "open",
                base_version_id=base.id,
                selected_sites=sorted(chosen),
                min_updates=stage.selection.min_sites,
                opened_at=now,
                deadline_at=deadline,
            )
            uow.session.add(rnd)
            uow.flush()
            for site in sites:
                uow.session.add(
                    models.Task(
                        id=models.new_id("task"),
                        experiment_id=experiment_id,
                        round_id=rnd.id,
                        site_id=site.id,
                        kind="personalize" if personalize else "train",
                        stage_index=stage_index,
                        state="pending",
                        model_version_id=base.id,
                        deadline_at=deadline,
                        created_at=now,
                        updated_at=now,
                    )
                )
            stage_row = uow.session.scalars(
                select(models.Stage).where(
                    models.Stage.experiment_id == experiment_id, models.Stage.stage_index == stage_index
                )
            ).one()
            if stage_row.state == "pending":
                stage_row.state, stage_row.started_at = "running", now
            experiment = uow.session.get(models.Experiment, experiment_id)
            assert experiment is not None
            experiment.current_round, experiment.updated_at = number, now
            record_event(
                uow,
                "round.opened",
                f"{stage.stage_name} round {number} opened for {sorted(chosen)}",
                experiment_id,
                {"round_id": rnd.id, "round": number, "sites": sorted(chosen), "deadline_unix": deadline},
            )
            uow.commit()
            round_id = rnd.id
            site_ids = [site.id for site in sites]
        log.info(
            "round opened", extra={"experiment": experiment_id, "round": number, "sites": sorted(chosen)}
        )
        if personalize:
            self._drive_personalize_round(round_id)
        else:
            self._drive_round(round_id)
        self._notifier.notify(sites=site_ids)

    def _drive_personalize_round(self, round_id: str) -> None:
        """Close a personalize round when every task ended or at its deadline; no aggregation."""
        now = self._clock.now()
        with self._uow_factory() as uow:
            rnd = uow.session.get(models.Round, round_id)
            assert rnd is not None
            if rnd.state not in OPEN_ROUND_STATES:
                return
            states = list(
                uow.session.scalars(select(models.Task.state).where(models.Task.round_id == round_id))
            )
            done = sum(1 for s in states if s == "done")
            all_ended = all(s not in LIVE_TASK_STATES for s in states)
            if not (all_ended or now >= rnd.deadline_at):
                return
            if done < rnd.min_updates:
                why = "every task ended" if all_ended else "deadline passed"
                min_updates = rnd.min_updates
            else:
                commit_personalize_round(uow, round_id, now)
                uow.commit()
                log.info("personalize round closed", extra={"round": round_id, "sites_done": done})
                self._notifier.notify()
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
            rnd = uow.session.get(models.Round, round_id)
            assert rnd is not None
            if rnd.state not in OPEN_ROUND_STATES:
                return
            states = list(
                uow.session.scalars(select(models.Task.state).where(models.Task.round_id == round_id))
            )
            received = (
                uow.session.scalar(
                    select(func.count(models.Update.id)).where(
                        models.Update.round_id == round_id, models.Update.state.in_(FOLDABLE)
                    )
                )
                or 0
            )
            min_updates, deadline, aggregating = rnd.min_updates, rnd.deadline_at, rnd.state == "aggregating"
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
                rnd = uow.session.get(models.Round, round_id)
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
        now = self._clock.now()
        with self._uow_factory() as uow:
            rnd = uow.session.get(models.Round, round_id)
            assert rnd is not None
            if rnd.state in ("committed", "failed"):
                return
            rnd.state, rnd.closed_at, rnd.reason = "failed", now, reason
            cancel_live_tasks(uow, round_id=round_id)
            record_event(
                uow,
                "round.failed",
                f"round {rnd.round} failed: {reason}",
                rnd.experiment_id,
                {"round_id": round_id, "round": rnd.round, "reason": reason},
            )
            self._fail_experiment(uow, rnd.experiment_id, f"round {rnd.round} failed: {reason}")
            uow.commit()
        self._commit_retries.forget(round_id)
        log.warning("round failed", extra={"round": round_id, "reason": reason})
        self._aggregator.discard(round_id)
        self._notifier.notify()

    def _fail_experiment(self, uow: SqlUnitOfWork, experiment_id: str, reason: str) -> None:
        experiment = uow.session.get(models.Experiment, experiment_id)
        assert experiment is not None
        if experiment.state in ("completed", "failed", "aborted"):
            return
        reason = public_text(reason, ERROR_TEXT_LIMIT)  # may quote a site's task error
        experiment.state, experiment.error, experiment.updated_at = "failed", reason, self._clock.now()
        uow.session.execute(
            update(models.Task)
            .where(models.Task.experiment_id == experiment_id, models.Task.state.in_(LIVE_TASK_STATES))
            .values(state="cancelled", lease_expires_at=None)
        )
        record_event(
            uow,
            "experiment.failed",
            f"experiment {experiment.name} failed: {reason}",
            experiment_id,
            {"reason": reason},
        )


def _message(err: Exception) -> str:
    """A FedtuneError's public message, or the type and text of an unexpected exception (bounded)."""
    if isinstance(err, FedtuneError):
        return err.message
    return f"{type(err).__name__}: {describe_error(err)}"
