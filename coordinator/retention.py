"""Retention of model versions (docs/decisions.md 33): which versions keep their tensors, and pins.

Per experiment: keep its last `retention_keep_last` versions (0 = keep every version), every stage's
final version, every pinned version (``fedtune admin models pin``; ExportModel pins what it exports)
and every version an open round or a live task starts from. Any other version is *pruned* by the
collector (``coordinator/collector.py``): its row stays (metrics, lineage, ``fedtune admin models``)
but its tensors may go, and fetching or exporting it answers NOT_FOUND.
"""

from __future__ import annotations

from coordinator.clock import Clock
from fedtune import limits
from fedtune.errors import ErrorCode, FedtuneError
from storage import models
from storage.registry import get_model_version, record_event
from storage.uow import UnitOfWork, UowFactory

MAX_PIN_REASON_CHARS = 200


def versions_to_prune(uow: UnitOfWork, experiment_id: str, keep_last: int) -> list[models.ModelVersion]:
    """The experiment's versions the policy prunes now (not pruned yet), oldest first."""
    versions = uow.versions.ordered(experiment_id)
    if keep_last <= 0:
        return []
    keep = {v.id for v in versions[-keep_last:]}  # includes the latest
    keep |= {v.id for v in versions if v.pinned_at is not None}
    keep |= {s.output_version_id for s in uow.stages.for_experiment(experiment_id) if s.output_version_id}
    keep |= {r.base_version_id for r in uow.rounds.open_for_experiment(experiment_id) if r.base_version_id}
    keep |= {t.model_version_id for t in uow.tasks.live_for_experiment(experiment_id) if t.model_version_id}
    return [v for v in versions if v.id not in keep and v.pruned_at is None]


def pin_version(uow: UnitOfWork, row: models.ModelVersion, reason: str, now: float) -> bool:
    """Pin `row` (never pruned) with `reason`; False if it was pinned already."""
    if row.pinned_at is not None:
        return False
    if row.pruned_at is not None:
        raise FedtuneError(
            ErrorCode.WRONG_STATE, f"model version {row.id} was pruned: its tensors are gone, pin a kept one"
        )
    row.pinned_at, row.pin_reason = now, reason
    record_event(
        uow,
        "model.pinned",
        f"model version {row.version} ({row.id}) pinned: {reason}",
        row.experiment_id,
        {"version_id": row.id, "reason": reason},
    )
    return True


def set_pin(uow_factory: UowFactory, clock: Clock, version_id: str, pinned: bool, reason: str = "") -> None:
    """Pin a version (never pruned) or unpin it (the policy applies again); PinModel."""
    limits.check_id("version_id", version_id)
    limits.check_text("reason", reason, MAX_PIN_REASON_CHARS, multiline=False)
    with uow_factory() as uow:
        row = get_model_version(uow, version_id)
        if pinned:
            pin_version(uow, row, reason or "pinned by an operator", clock.now())
        elif row.pinned_at is not None:
            row.pinned_at, row.pin_reason = None, ""
            record_event(
                uow,
                "model.unpinned",
                f"model version {row.version} ({row.id}) unpinned" + (f": {reason}" if reason else ""),
                row.experiment_id,
                {"version_id": row.id, "reason": reason},
            )
        uow.commit()
