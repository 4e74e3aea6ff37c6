"""A secure-aggregation round, step by step, driven from the registry alone (restart-safe).

At open, the round gets a ``SecAggRound`` row (phase ``advertise``), one ``SecAggSite`` per selected
site (its index: rank of its name) and a ``secagg_advertise`` task each. The round closer calls
``advance`` under the round lock on every pass; each step ends when all its tasks ended or at its time
limit, and the next step's tasks are made for the sites that finished this one:

- advertise -> share: U1 = sites that sent keys; the graph seed is fixed from all of them;
- share -> train: U2 = sites that dealt their share boxes; each gets its train task (masked upload);
- train -> unmask (at the round's deadline or when every train task ended): the survivors are the
  sites whose masked update was folded, the dropped ones are U2 minus them; the split is stored before
  any unmask task exists, so every holder is asked the same question, also after a restart;
- unmask -> commit: when every unmask task ended or at its limit (the commit fails cleanly if too few
  shares arrived).

Any step that leaves fewer sites than the round needs fails the round (and its experiment) with a reason.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator import lifecycle
from coordinator.secagg.payload import advertised_keys
from fedtune.secagg.graph import choose_graph_params
from fedtune.secagg.keys import round_context
from fedtune.secagg.site import graph_seed
from fedtune.spec import SECURE_AGGREGATION_MIN_SITES, SecAggSpec
from storage import models
from storage.registry import record_event
from storage.states import LIVE_TASK_STATES
from storage.uow import UnitOfWork


class Phase(enum.StrEnum):
    ADVERTISE = "advertise"
    SHARE = "share"
    TRAIN = "train"
    UNMASK = "unmask"


TASK_OF_PHASE = {
    Phase.ADVERTISE: "secagg_advertise",
    Phase.SHARE: "secagg_share",
    Phase.TRAIN: "train",
    Phase.UNMASK: "secagg_unmask",
}


class Step(enum.Enum):
    WAIT = "wait"
    COMMIT = "commit"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str = ""


def open_secagg_round(
    uow: UnitOfWork, rnd: models.Round, sites: Sequence[models.Site], deadline: float, now: float
) -> None:
    """The protocol row, each site's index, and the advertise tasks (leasable once the round collects)."""
    ordered = sorted(sites, key=lambda s: s.name)
    uow.secagg.add(
        models.SecAggRound(
            round_id=rnd.id,
            phase=Phase.ADVERTISE,
            phase_started_at=now,
            num_sites=len(ordered),
            survivors=[],
            dropped=[],
        )
    )
    for index, site in enumerate(ordered):
        uow.secagg.add(models.SecAggSite(round_id=rnd.id, site_index=index, site_id=site.id))
    for site in ordered:
        _task(uow, rnd, site.id, Phase.ADVERTISE, deadline, now)


def _task(
    uow: UnitOfWork, rnd: models.Round, site_id: int, phase: Phase, deadline: float, now: float
) -> None:
    lifecycle.create_task(
        uow,
        experiment_id=rnd.experiment_id,
        round_id=rnd.id,
        site_id=site_id,
        kind=TASK_OF_PHASE[phase],
        stage_index=rnd.stage_index,
        model_version_id=rnd.base_version_id,
        deadline=deadline,
        now=now,
    )


def needed_sites(rnd: models.Round) -> int:
    return max(rnd.min_updates, SECURE_AGGREGATION_MIN_SITES)


class SecAggPhases:
    def __init__(self, phase_seconds: float) -> None:
        self._phase_seconds = phase_seconds

    def phase_deadline(self, rnd: models.Round, state: models.SecAggRound) -> float:
        if state.phase == Phase.TRAIN:
            return rnd.deadline_at
        end = state.phase_started_at + self._phase_seconds
        return end if state.phase == Phase.UNMASK else min(end, rnd.deadline_at)

    def advance(self, uow: UnitOfWork, rnd: models.Round, spec: SecAggSpec, now: float) -> Decision:
        """Move the round's protocol on by at most one step (call under the round lock, then commit)."""
        state = uow.secagg.round(rnd.id)
        assert state is not None
        kind = TASK_OF_PHASE[Phase(state.phase)]
        tasks = [t for t in uow.tasks.in_round(rnd.id) if t.kind == kind]
        live = [t for t in tasks if t.state in LIVE_TASK_STATES]
        if live and now < self.phase_deadline(rnd, state):
            return Decision(Step.WAIT)
        for task in live:  # the step is over: late answers are `task_closed:`
            lifecycle.drop_task(uow, task, now, f"secure aggregation moved past the {state.phase} step")
        sites = uow.secagg.sites(rnd.id)
        if state.phase == Phase.ADVERTISE:
            ready = [s for s in sites if s.mask_key is not None]
            return self._next(uow, rnd, state, ready, Phase.SHARE, now, spec, "advertised keys")
        if state.phase == Phase.SHARE:
            ready = [s for s in sites if s.shared_at is not None]
            return self._next(uow, rnd, state, ready, Phase.TRAIN, now, spec, "dealt their shares")
        if state.phase == Phase.TRAIN:
            folded = {site for _, site in uow.rounds.foldable_updates(rnd.id, by_site=True)}
            names = {s.id: s.name for s in uow.sites.by_names(list(rnd.selected_sites))}
            dealt = [s for s in sites if s.shared_at is not None]
            survivors = [s for s in dealt if names.get(s.site_id) in folded]
            state.survivors = [s.site_index for s in survivors]
            state.dropped = [s.site_index for s in dealt if s not in survivors]
            return self._next(uow, rnd, state, survivors, Phase.UNMASK, now, spec, "sent a masked update")
        return Decision(Step.COMMIT)

    def _next(
        self,
        uow: UnitOfWork,
        rnd: models.Round,
        state: models.SecAggRound,
        ready: list[models.SecAggSite],
        phase: Phase,
        now: float,
        spec: SecAggSpec,
        did: str,
    ) -> Decision:
        needed = needed_sites(rnd)
        if phase == Phase.UNMASK:
            threshold = choose_graph_params(state.num_sites, spec.neighbours, spec.threshold).threshold
            needed = max(needed, threshold)
        if len(ready) < needed:
            return Decision(
                Step.FAIL,
                f"secure aggregation: {len(ready)} of {state.num_sites} site(s) {did} in the {state.phase} "
                f"step; the round needs {needed}",
            )
        if phase == Phase.SHARE:
            context = round_context(rnd.experiment_id, rnd.id)
            state.graph_seed = graph_seed(context, advertised_keys(ready))
        previous = state.phase
        state.phase, state.phase_started_at = phase, now
        deadline = self.phase_deadline(rnd, state)
        for site in ready:
            _task(uow, rnd, site.site_id, phase, deadline, now)
        record_event(
            uow,
            "round.secagg_step",
            f"round {rnd.round}: secure aggregation {previous} step done ({len(ready)} site(s) {did}); "
            f"{phase} next",
            rnd.experiment_id,
            {"round_id": rnd.id, "step": str(phase), "sites": [s.site_index for s in ready]},
        )
        return Decision(Step.WAIT)
