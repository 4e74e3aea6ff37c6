"""Why an experiment cannot start or move on, said once and shown where the operator looks.

Two cases the scheduler used to wait on in silence:

- a stage's ``selection.sites`` names a site this coordinator does not know: no round can ever have
  it, so submit and start refuse the spec (INVALID_SPEC naming the sites and saying how to add them);
- fewer eligible sites are online than ``min_sites`` (maybe fewer are registered): the experiment is
  accepted (sites and workers can come later) and waits, and the scheduler records an
  ``experiment.waiting`` event with the reason (only when the reason changes, never once per tick) and
  logs it. ``current_waiting_reason`` is the latest such event not followed by progress (a round
  opened or an INIT task made): what ``fedtune admin experiment show`` prints as "waiting".
"""

from __future__ import annotations

import logging

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, SelectionSpec
from storage.registry import record_event
from storage.uow import UnitOfWork

log = logging.getLogger("fedtune.coordinator.waiting")

WAITING_EVENT = "experiment.waiting"
# Events that end a wait: the experiment moved on.
PROGRESS_EVENTS = ("round.opened", "task.created")
# Site names listed in a reason (the rest are counted).
MAX_LISTED_SITES = 10


def registered_site_names(uow: UnitOfWork) -> list[str]:
    return uow.sites.names()


def check_selection_sites_known(uow: UnitOfWork, spec: ExperimentSpec) -> None:
    """INVALID_SPEC when a stage's selection.sites, or peft.site_ranks, names a site the coordinator does
    not know."""
    registered = set(registered_site_names(uow))
    unknown_ranked = sorted(set(getattr(spec.peft, "site_ranks", None) or ()) - registered)
    if unknown_ranked:
        raise FedtuneError(
            ErrorCode.INVALID_SPEC,
            f"peft.site_ranks: {_names(unknown_ranked)} not registered with this coordinator "
            f"(registered: {_names(sorted(registered)) or 'none'}); register them first "
            "(`fedtune admin sites add NAME`) or remove them from the spec",
        )
    for index, stage in enumerate(spec.stages):
        unknown = sorted(set(stage.selection.sites or ()) - registered)
        if unknown:
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"stages.{index}.selection.sites: {_names(unknown)} not registered with this coordinator "
                f"(registered: {_names(sorted(registered)) or 'none'}); register them first "
                "(`fedtune admin sites add NAME`) or remove them from the spec",
            )


def round_waiting_reason(uow: UnitOfWork, selection: SelectionSpec, online: list[str], what: str) -> str:
    """Why `what` (e.g. "finetune round 1") cannot start: counts of eligible online and registered sites."""
    registered = registered_site_names(uow)
    if selection.sites is not None:
        listed = set(selection.sites)
        registered = [name for name in registered if name in listed]
        online = [name for name in online if name in listed]
    online = sorted(set(online))
    need = selection.min_sites
    scope = "listed in selection.sites and " if selection.sites is not None else ""
    reason = (
        f"waiting for sites to start {what}: min_sites={need}, {len(online)} site(s) {scope}online"
        f"{' (' + _names(online) + ')' if online else ''}, {len(registered)} registered"
    )
    if len(registered) < need:
        reason += (
            f"; fewer sites are registered than min_sites: register {need - len(registered)} more "
            "(`fedtune admin sites add NAME`) or lower min_sites"
        )
    else:
        reason += "; start the workers of the missing sites"
    return reason


def current_waiting_reason(uow: UnitOfWork, experiment_id: str) -> str:
    """The reason of the latest experiment.waiting event, unless the experiment moved on since."""
    latest = uow.events.latest_of_kinds(experiment_id, (WAITING_EVENT, *PROGRESS_EVENTS))
    if latest is None or latest.kind != WAITING_EVENT:
        return ""
    return str(latest.data.get("reason", latest.message))


def announce_waiting(uow: UnitOfWork, experiment_id: str, reason: str) -> bool:
    """Record an experiment.waiting event when `reason` differs from the current one; True if recorded."""
    if current_waiting_reason(uow, experiment_id) == reason:
        return False
    record_event(uow, WAITING_EVENT, reason, experiment_id, {"reason": reason})
    log.info("experiment waits: %s", reason, extra={"experiment": experiment_id})
    return True


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED_SITES])
    return shown + (f" and {len(names) - MAX_LISTED_SITES} more" if len(names) > MAX_LISTED_SITES else "")
