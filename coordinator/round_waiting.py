"""What an open round waits for, and when it stops waiting for a site that went away (decision 33).

A round waits for every live task (pending or leased). A site whose workers are all marked offline
(the scheduler does that after `worker_offline_after_seconds` of silence) is *lost*. When the round
can reach min_sites without its lost sites (updates received + live tasks on sites with a worker
online >= min_sites), their tasks are cancelled (``lifecycle.drop_task``, a ``task.dropped`` event
saying why), so the round closes as soon as the others are in; a lost site's late push is then
FAILED_PRECONDITION `task_closed:` and its worker pulls the next round's task. When the round needs
them, it keeps waiting: a site that comes back (heartbeats) before the deadline still delivers, and
the deadline stays the last resort. A site that is online but slow is always waited for.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator import lifecycle
from storage import models
from storage.states import RoundState
from storage.uow import UnitOfWork

# `fedtune admin rounds` names at most this many sites a round waits for (then "+N more").
MAX_LISTED_WAITING = 50


def drop_lost_sites(uow: UnitOfWork, rnd: models.Round, received: int, now: float) -> int:
    """Cancel the live tasks of sites with no worker online when the round reaches min_sites without
    them; how many were cancelled (0: none lost, or the round needs them). Run under the round lock, so
    an update being accepted for such a task is either in (task done) or refused (`task_closed:`)."""
    if rnd.state != RoundState.COLLECTING:
        return 0
    live = uow.tasks.live_for_round(rnd.id)
    online = uow.workers.online_site_ids([task.site_id for task in live])
    lost = [task for task in live if task.site_id not in online]
    working = len(live) - len(lost)
    if not lost or received + working < rnd.min_updates:
        return 0
    for task in lost:
        site = uow.sites.get(task.site_id)
        name = site.name if site is not None else str(task.site_id)
        why = (
            f"site {name} has no worker online; round {rnd.round} reaches min_sites={rnd.min_updates} "
            f"without it ({received} update(s) in, {working} site(s) still working)"
        )
        lifecycle.drop_task(uow, task, now, why)
    return len(lost)


@dataclass(frozen=True)
class RoundWait:
    """What `fedtune admin rounds` shows for an open round."""

    waiting_for: tuple[str, ...]  # sites with a live task (capped at MAX_LISTED_WAITING)
    reason: str


def describe_wait(
    uow: UnitOfWork, rnd: models.Round, received: int, names: dict[int, str], now: float
) -> RoundWait:
    """Which sites an open round waits for and why (names: site id -> name)."""
    if rnd.state == RoundState.OPEN:
        return RoundWait((), "starting the round's accumulator")
    if rnd.state == RoundState.AGGREGATING:
        return RoundWait((), "committing")
    live = uow.tasks.live_for_round(rnd.id)
    online = uow.workers.online_site_ids([task.site_id for task in live])
    sites = sorted(names.get(task.site_id, str(task.site_id)) for task in live)
    lost = sorted(names.get(task.site_id, str(task.site_id)) for task in live if task.site_id not in online)
    left = max(0.0, rnd.deadline_at - now)
    text = f"{received} update(s) in, min_sites={rnd.min_updates}"
    secagg = uow.secagg.round(rnd.id)
    if secagg is not None:  # which step of secure aggregation the round is in (docs/privacy.md)
        text = f"secure aggregation, {secagg.phase} step; " + text
    if not live:
        text += "; every task ended: closing"
    else:
        text += f"; waiting for {len(sites)} site(s), deadline in {left:.0f} s"
    if lost:
        needed = received + len(live) - len(lost) < rnd.min_updates
        text += f"; offline: {_listed(lost)} " + (
            "(still waited for: the round needs them to reach min_sites)"
            if needed
            else "(dropped at the next pass: the others reach min_sites)"
        )
    return RoundWait(tuple(sites[:MAX_LISTED_WAITING]), text)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:10])
    return shown + (f" +{len(names) - 10} more" if len(names) > 10 else "")
