"""Read side of the Admin API: registry rows to serde records."""

from __future__ import annotations

import json
import time
from typing import Any

from coordinator.clock import Clock
from coordinator.privacy_budget import privacy_status
from coordinator.round_waiting import describe_wait
from coordinator.waiting import current_waiting_reason
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.limits import (
    MAX_DATASET_ENTRIES,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_MESSAGE_CHARS,
    bounded_metrics,
    clip_text,
)
from fedtune.sanitize import ERROR_TEXT_LIMIT, public_text
from fedtune.serde import (
    EventRecord,
    ExperimentRecord,
    ModelVersionRecord,
    RoundRecord,
    SiteUpdateRecord,
    WorkerRecord,
    round_to_proto,
)
from fedtune.spec import load_spec_json
from fedtune.tensorstream.manifest import Manifest
from storage import models
from storage.registry import events_after, get_model_version, latest_model_version
from storage.states import OPEN_ROUND_STATES, WorkerState
from storage.uow import UnitOfWork, UowFactory

DEFAULT_ROUNDS_PAGE = 100
MAX_ROUNDS_PAGE = 1000
ROUNDS_PAGE_BYTES = 4 << 20  # a ListRounds page ends after the round that passes this
# a round lists at most this many accepted updates (1,000 sites is the design's scale)
MAX_LISTED_SITE_UPDATES = 2000


def _accepted_updates(uow: UnitOfWork, round_id: str) -> tuple[SiteUpdateRecord, ...]:
    """The round's verified or folded updates, by site name."""
    rows = uow.rounds.foldable_updates(round_id, by_site=True, limit=MAX_LISTED_SITE_UPDATES)
    return tuple(
        SiteUpdateRecord(
            site=site,
            num_examples=update.num_examples,
            weight=update.weight,
            metrics=bounded_metrics(update.metrics),
            received_bytes=update.received_bytes,
            state=update.state,
        )
        for update, site in rows
    )


def _experiment_record(uow: UnitOfWork, row: models.Experiment) -> ExperimentRecord:
    stage = uow.stages.current(row)
    latest = latest_model_version(uow, row.id)
    return ExperimentRecord(
        experiment_id=row.id,
        name=row.name,
        state=row.state,
        spec_yaml=row.spec_yaml,
        current_stage=stage.name if stage is not None else "",
        current_stage_index=row.current_stage_index,
        current_round=row.current_round,
        created_unix=row.created_at,
        updated_unix=row.updated_at,
        error=public_text(row.error or "", ERROR_TEXT_LIMIT),
        latest_model_version_id=latest.id if latest is not None else "",
        waiting_reason=current_waiting_reason(uow, row.id) if row.state == "running" else "",
        privacy=privacy_status(uow, row.id, load_spec_json(row.spec_json)),
    )


def _version_record(row: models.ModelVersion) -> ModelVersionRecord:
    return ModelVersionRecord(
        version_id=row.id,
        experiment_id=row.experiment_id,
        version=row.version,
        parent_id=row.parent_id or "",
        stage=row.stage_name,
        round=row.round,
        kind=row.kind,
        blob_digest=row.blob_digest,
        manifest=Manifest.from_json(row.manifest),
        metrics=bounded_metrics(row.metrics),
        sites=tuple(row.sites),
        num_examples=row.num_examples,
        created_unix=row.created_at,
        files=tuple(sorted(row.files)),
        pinned=row.pin_reason or ("pinned" if row.pinned_at is not None else ""),
        pruned_unix=row.pruned_at or 0.0,
    )


class AdminQueries:
    EVENT_PAGE = 500  # events per read

    def __init__(self, uow_factory: UowFactory, clock: Clock, offline_after: float) -> None:
        self._uow_factory = uow_factory
        self._clock = clock
        self._offline_after = offline_after
        self._started = time.monotonic()

    def experiment(self, experiment_id: str) -> ExperimentRecord:
        with self._uow_factory() as uow:
            row = uow.experiments.get(experiment_id)
            if row is None:
                raise FedtuneError(ErrorCode.NOT_FOUND, f"no experiment {experiment_id!r}")
            return _experiment_record(uow, row)

    def experiments(self) -> list[ExperimentRecord]:
        with self._uow_factory() as uow:
            return [_experiment_record(uow, row) for row in uow.experiments.all()]

    def rounds(self, experiment_id: str) -> list[RoundRecord]:
        """Every round (tests and small experiments; the Admin API pages with `rounds_page`)."""
        records, token = self.rounds_page(experiment_id, MAX_ROUNDS_PAGE)
        while token:
            page, token = self.rounds_page(experiment_id, MAX_ROUNDS_PAGE, token)
            records.extend(page)
        return records

    def rounds_page(
        self, experiment_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[RoundRecord], str]:
        """One page of rounds in (stage, round) order and the token of the next page ("" at the end).

        A page holds at most `page_size` rounds (default DEFAULT_ROUNDS_PAGE) and ends early once it
        passes ROUNDS_PAGE_BYTES on the wire; a round lists at most MAX_LISTED_SITE_UPDATES site
        updates with bounded metrics, so a page stays small whatever the sites sent."""
        if page_size < 0 or (page_token and not page_token.isdigit()) or len(page_token) > 12:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                "page_size must be >= 0 and page_token one returned by ListRounds (or empty)",
            )
        limit = min(page_size or DEFAULT_ROUNDS_PAGE, MAX_ROUNDS_PAGE)
        offset = int(page_token or 0)
        with self._uow_factory() as uow:
            _require_experiment(uow, experiment_id)
            stage_rows = uow.stages.for_experiment(experiment_id)
            stages = {stage.stage_index: stage.name for stage in stage_rows}
            kinds = {stage.stage_index: stage.kind for stage in stage_rows}
            rows = uow.rounds.page(experiment_id, offset, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            records: list[RoundRecord] = []
            page_bytes = 0
            names = {site.id: site.name for site in uow.sites.all()} if any_open(rows) else {}
            for rnd in rows:
                tasks = uow.tasks.count_in_round(rnd.id)
                site_updates: tuple[SiteUpdateRecord, ...] = ()
                if kinds.get(rnd.stage_index) == "personalize":  # results, not updates
                    updates = uow.tasks.count_done_in_round(rnd.id)
                else:
                    site_updates = _accepted_updates(uow, rnd.id)
                    updates = len(site_updates)
                records.append(
                    RoundRecord(
                        round_id=rnd.id,
                        experiment_id=rnd.experiment_id,
                        stage=stages.get(rnd.stage_index, ""),
                        stage_index=rnd.stage_index,
                        round=rnd.round,
                        state=rnd.state,
                        tasks_total=tasks or 0,
                        updates_received=updates or 0,
                        opened_unix=rnd.opened_at,
                        deadline_unix=rnd.deadline_at,
                        closed_unix=rnd.closed_at or 0.0,
                        reason=rnd.reason,
                        metrics=bounded_metrics(rnd.metrics),
                        model_version_id=rnd.model_version_id or "",
                        site_updates=site_updates,
                        **_waiting(uow, rnd, updates or 0, names, self._clock.now()),
                    )
                )
                page_bytes += round_to_proto(records[-1]).ByteSize()
                if page_bytes >= ROUNDS_PAGE_BYTES and len(records) < len(rows):
                    more = True
                    break
            return records, str(offset + len(records)) if more else ""

    def workers(self) -> list[WorkerRecord]:
        now = self._clock.now()
        with self._uow_factory() as uow:
            records = []
            for worker, site in uow.workers.with_site_names():
                online = (
                    worker.state == WorkerState.ONLINE and worker.last_seen_at >= now - self._offline_after
                )
                state = ("busy" if worker.current_task_id else "online") if online else "offline"
                device = worker.device or {}
                label = " ".join(str(device.get(k, "")) for k in ("kind", "name")).strip()
                records.append(
                    WorkerRecord(
                        site=site,
                        worker_id=worker.id,
                        state=state,
                        last_seen_unix=worker.last_seen_at,
                        device=label,
                        current_task_id=worker.current_task_id or "",
                        dataset_sizes={
                            k: int(v)
                            for k, v in list((worker.dataset_sizes or {}).items())[:MAX_DATASET_ENTRIES]
                        },
                    )
                )
            return records

    def models(self, experiment_id: str = "") -> list[ModelVersionRecord]:
        with self._uow_factory() as uow:
            if experiment_id:
                _require_experiment(uow, experiment_id)
            return [_version_record(row) for row in uow.versions.ordered(experiment_id or None)]

    def model(self, version_id: str) -> ModelVersionRecord:
        with self._uow_factory() as uow:
            return _version_record(get_model_version(uow, version_id))

    def events(self, after_id: int, experiment_id: str = "", limit: int = 500) -> list[EventRecord]:
        with self._uow_factory() as uow:
            rows = events_after(uow, after_id, experiment_id=experiment_id or None, limit=limit)
            return [
                EventRecord(
                    event_id=e.id,
                    created_unix=e.created_at,
                    experiment_id=e.experiment_id or "",
                    kind=e.kind,
                    message=clip_text(e.message, MAX_EVENT_MESSAGE_CHARS),
                    data=_bounded_data(dict(e.data or {})),
                )
                for e in rows
            ]

    def require_experiment(self, experiment_id: str) -> None:
        """NOT_FOUND for a mistyped experiment id (WatchEvents checks its filter with this)."""
        with self._uow_factory() as uow:
            _require_experiment(uow, experiment_id)

    def status(self) -> dict[str, int | float]:
        now = self._clock.now()
        with self._uow_factory() as uow:
            running = uow.experiments.count_live()
            online = uow.workers.count_online(now - self._offline_after)
        return {
            "uptime_seconds": time.monotonic() - self._started,
            "experiments_running": int(running or 0),
            "workers_online": int(online or 0),
        }


def any_open(rounds: list[models.Round]) -> bool:
    return any(rnd.state in OPEN_ROUND_STATES for rnd in rounds)


def _waiting(
    uow: UnitOfWork, rnd: models.Round, received: int, names: dict[int, str], now: float
) -> dict[str, Any]:
    """waiting_for / waiting_reason of an open round (nothing for a closed one)."""
    if rnd.state not in OPEN_ROUND_STATES:
        return {}
    wait = describe_wait(uow, rnd, received, names, now)
    return {"waiting_for": wait.waiting_for, "waiting_reason": wait.reason}


def _bounded_data(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data as WatchEvents sends it: itself when small, else a note of its size."""
    size = len(json.dumps(data, sort_keys=True, default=str))
    return data if size <= MAX_EVENT_DATA_BYTES else {"truncated": True, "data_bytes": size}


def _require_experiment(uow: UnitOfWork, experiment_id: str) -> None:
    """NOT_FOUND for a mistyped id, so a filter never silently answers with nothing."""
    if uow.experiments.get(experiment_id) is None:
        raise FedtuneError(
            ErrorCode.NOT_FOUND, f"no experiment {experiment_id!r}; see `fedtune admin experiment list`"
        )
