"""Driving and closing rounds off the scheduler thread: a small pool, one job per round at a time.

A job starts the round's accumulator (open -> collecting), stops waiting for sites that went away
when the round reaches min_sites without them (``round_waiting.py``, decision 33), and closes the
round when every task has ended or at its deadline: a commit (the strategy's ``finish_round``, the
new version's blobs, one SQL transaction, under the round lock as before) with >= min_sites
updates, else the round and its experiment fail. A personalize round has no accumulator: it closes
the same way, counting reported results, and stores per-site metrics but no version. A commit that
fails on I/O waits and is retried (``coordinator/commit_retry.py``, docs/decisions.md 26). The
scheduler submits a job for every open round on each pass; a round whose job still runs is skipped,
so a large commit stalls nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from coordinator import lifecycle
from coordinator.aggregation import RoundAggregator
from coordinator.clock import Clock
from coordinator.commit_retry import CommitRetries, describe_error, is_transient_io_error
from coordinator.round_waiting import drop_lost_sites
from coordinator.secagg.phases import SecAggPhases, Step
from coordinator.settings import CoordinatorSettings
from coordinator.stages import commit_personalize_round
from fedtune.errors import FedtuneError
from fedtune.spec import load_spec_json
from storage.registry import record_event
from storage.states import LIVE_TASK_STATES, OPEN_ROUND_STATES, RoundState, TaskState
from storage.uow import UowFactory

log = logging.getLogger("fedtune.coordinator.rounds")


class RoundCloser:
    def __init__(
        self,
        uow_factory: UowFactory,
        clock: Clock,
        settings: CoordinatorSettings,
        aggregator: RoundAggregator,
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._aggregator = aggregator
        self._commit_retries = CommitRetries(
            settings.commit_retry_initial_seconds, settings.commit_retry_max_seconds
        )
        self._pool = ThreadPoolExecutor(settings.commit_threads, thread_name_prefix="fedtune-round")
        self._in_flight: dict[str, Future[None]] = {}
        self._guard = threading.Lock()
        self._closed = False
        self._secagg = SecAggPhases(settings.secagg_phase_seconds)

    # ----------------------------------------------------------------- the pool
    def submit(self, round_id: str, *, personalize: bool) -> Future[None] | None:
        """Drive the round on the pool, unless a job for it is still running; that job (None if closed)."""
        with self._guard:
            if self._closed:
                return None
            future = self._in_flight.get(round_id)
            new = future is None
            if future is None:
                drive = self.drive_personalize_round if personalize else self.drive_round
                future = self._in_flight[round_id] = self._pool.submit(self._job, round_id, drive)
        if new:  # outside the guard: a job that already ended runs the callback right here
            future.add_done_callback(lambda _: self._finished(round_id))
        return future

    def _job(self, round_id: str, drive: Callable[[str], None]) -> None:
        try:
            drive(round_id)
        except Exception:
            log.exception("driving round %s failed", round_id)

    def _finished(self, round_id: str) -> None:
        with self._guard:
            self._in_flight.pop(round_id, None)

    def running(self) -> list[str]:
        """Rounds whose job runs now."""
        with self._guard:
            return sorted(self._in_flight)

    def close(self) -> None:
        with self._guard:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ----------------------------------------------------------------- the jobs
    def drive_personalize_round(self, round_id: str) -> None:
        """Close a personalize round when every task ended or at its deadline; no aggregation."""
        now = self._clock.now()
        with self._uow_factory() as uow:
            rnd = uow.rounds.get(round_id)
            assert rnd is not None
            if rnd.state not in OPEN_ROUND_STATES:
                return
            if drop_lost_sites(uow, rnd, uow.tasks.count_done_in_round(round_id), now):
                uow.commit()  # the round stops waiting for sites that went away (decision 33)
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

    def _may_act(self, round_id: str, now: float) -> bool:
        """Whether a pass may change the round: it is aggregating, its deadline passed, no task is live,
        or a live task's site has no worker online (then `drop_lost_sites` decides). Read without the
        round lock or the write lock: a pass that changes nothing (most passes while a thousand sites
        upload) no longer holds up the updates being accepted under that lock (decision 42)."""
        with self._uow_factory.reader() as uow:
            rnd = uow.rounds.get(round_id)
            if rnd is None or rnd.state not in OPEN_ROUND_STATES:
                return False
            if rnd.state == RoundState.AGGREGATING or now >= rnd.deadline_at:
                return True
            sites = uow.tasks.live_site_ids_in_round(round_id)
            return not sites or len(uow.workers.online_site_ids(list(sites))) < len(sites)

    def drive_round(self, round_id: str) -> None:
        if not self._commit_retries.due(round_id, self._clock.now()):
            return  # waiting after an I/O failure (see _wait_after_io_failure)
        try:
            self._aggregator.begin(round_id)
        except Exception as err:
            if not self._wait_after_io_failure(round_id, "start aggregation", err):
                self.fail_round(round_id, f"could not start aggregation: {_message(err)}")
            return
        if not self._secure_aggregation_step(round_id):
            return
        now = self._clock.now()
        if not self._may_act(round_id, now):
            return
        with self._aggregator.round_lock(round_id), self._uow_factory() as uow:
            rnd = uow.rounds.get(round_id)
            assert rnd is not None
            if rnd.state not in OPEN_ROUND_STATES:
                return
            received = uow.rounds.count_foldable(round_id)
            if drop_lost_sites(uow, rnd, received, now):
                uow.commit()  # the round stops waiting for sites that went away (decision 33)
            states = uow.tasks.states_in_round(round_id)
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

    def _secure_aggregation_step(self, round_id: str) -> bool:
        """Move a secure-aggregation round's protocol on (``coordinator/secagg/phases.py``); True when the
        round closes as any other now (it is not a secagg round, or its last step is over)."""
        now = self._clock.now()
        with self._aggregator.round_lock(round_id), self._uow_factory() as uow:
            rnd = uow.rounds.get(round_id)
            if rnd is None or rnd.state != RoundState.COLLECTING or uow.secagg.round(round_id) is None:
                return True
            experiment = uow.experiments.get(rnd.experiment_id)
            assert experiment is not None
            spec = load_spec_json(experiment.spec_json).privacy.secagg
            drop_lost_sites(uow, rnd, uow.rounds.count_foldable(round_id), now)
            decision = self._secagg.advance(uow, rnd, spec, now)
            uow.commit()
        if decision.step is Step.FAIL:
            self.fail_round(round_id, decision.reason)
        return decision.step is Step.COMMIT

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
        log.warning("round failed: %s", reason, extra={"round": round_id, "reason": reason})
        self._aggregator.discard(round_id)


def _message(err: Exception) -> str:
    """A FedtuneError's public message, or the type and text of an unexpected exception (bounded)."""
    if isinstance(err, FedtuneError):
        return err.message
    return f"{type(err).__name__}: {describe_error(err)}"
