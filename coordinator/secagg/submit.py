"""A site's answer to a secure-aggregation step (SubmitSecAgg): checked against the round, stored in the
registry (so a restarted coordinator has every key, box and revealed share), and its task done.

Runs under the round lock, like an accepted update, so an answer lands either before the step ends (and
counts) or after (``task_closed:``), never half-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator import lifecycle
from coordinator.aggregation import RoundAggregator
from coordinator.clock import Clock
from coordinator.secagg.payload import advertised_keys
from coordinator.tasks import get_own_task
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.graph import choose_graph_params, neighbour_graph
from fedtune.secagg.keys import SitePublic
from fedtune.secagg.recovery import RevealedShare
from fedtune.secagg.shamir import SHARE_BYTES
from fedtune.secagg.share_box import SEALED_BYTES
from fedtune.secagg.wire import SECAGG_TASK_KINDS
from fedtune.spec import load_spec_json
from storage import models
from storage.states import TaskState
from storage.uow import UnitOfWork, UowFactory


@dataclass(frozen=True)
class SecAggAnswer:
    keys: SitePublic | None = None
    boxes: dict[int, bytes] = field(default_factory=dict)
    shares: Sequence[RevealedShare] = ()


def _bad(why: str) -> FedtuneError:
    return FedtuneError(ErrorCode.INVALID_ARGUMENT, why)


class SecAggSubmissions:
    def __init__(self, uow_factory: UowFactory, aggregator: RoundAggregator, clock: Clock) -> None:
        self._uow_factory = uow_factory
        self._aggregator = aggregator
        self._clock = clock

    def submit(self, site_id: int, task_id: str, answer: SecAggAnswer) -> None:
        with self._uow_factory.reader() as uow:
            round_id = get_own_task(uow, site_id, task_id).round_id
        if round_id is None:
            raise FedtuneError(ErrorCode.WRONG_STATE, f"task {task_id} is not a secure-aggregation step")
        with self._aggregator.round_lock(round_id), self._uow_factory() as uow:
            task = get_own_task(uow, site_id, task_id)
            if task.kind not in SECAGG_TASK_KINDS:
                raise FedtuneError(
                    ErrorCode.WRONG_STATE, f"a {task.kind} task is not answered with SubmitSecAgg"
                )
            if task.state != TaskState.LEASED:
                raise FedtuneError(
                    ErrorCode.TASK_CLOSED, f"task {task_id} is {task.state}; answer not needed"
                )
            state = uow.secagg.round(round_id)
            assert state is not None
            rows = uow.secagg.sites(round_id)
            me = next(row for row in rows if row.site_id == site_id)
            now = self._clock.now()
            if task.kind == "secagg_advertise":
                if answer.keys is None:
                    raise _bad("an advertise answer carries the site's keys")
                me.cipher_key, me.mask_key = answer.keys.cipher_key, answer.keys.mask_key
                me.seed_commitment = answer.keys.seed_commitment
            else:
                spec = load_spec_json(self._spec_json(uow, task)).privacy.secagg
                params = choose_graph_params(state.num_sites, spec.neighbours, spec.threshold)
                mine = neighbour_graph(params, bytes(state.graph_seed or b""))[me.site_index]
                if task.kind == "secagg_share":
                    self._store_boxes(uow, state, me, rows, mine, answer.boxes)
                    me.shared_at = now
                else:
                    self._store_reveal(uow, state, me, rows, mine, answer.shares)
                    me.revealed_at = now
            lifecycle.end_task(uow, task, TaskState.DONE, now)
            uow.commit()

    @staticmethod
    def _spec_json(uow: UnitOfWork, task: models.Task) -> str:
        experiment = uow.experiments.get(task.experiment_id)
        assert experiment is not None
        return experiment.spec_json

    @staticmethod
    def _store_boxes(
        uow: UnitOfWork,
        state: models.SecAggRound,
        me: models.SecAggSite,
        rows: list[models.SecAggSite],
        mine: frozenset[int],
        boxes: dict[int, bytes],
    ) -> None:
        expected = {i for i in advertised_keys(rows) if i in mine}
        if set(boxes) != expected:
            raise _bad(
                f"site {me.site_index} must send one box to each neighbour that advertised keys "
                f"({sorted(expected)}), got {sorted(boxes)}"
            )
        for holder, box in sorted(boxes.items()):
            if len(box) != SEALED_BYTES:
                raise _bad(f"a sealed share box has {SEALED_BYTES} bytes, not {len(box)}")
            uow.secagg.add(
                models.SecAggShare(round_id=state.round_id, owner=me.site_index, holder=holder, box=box)
            )

    @staticmethod
    def _store_reveal(
        uow: UnitOfWork,
        state: models.SecAggRound,
        me: models.SecAggSite,
        rows: list[models.SecAggSite],
        mine: frozenset[int],
        shares: Sequence[RevealedShare],
    ) -> None:
        survivors, dropped = set(state.survivors), set(state.dropped)
        held = {box.owner: box for box in uow.secagg.shares(state.round_id, holder=me.site_index)}
        seen: set[int] = set()
        for share in shares:
            kind = "seed" if share.owner in survivors else "mask_key"
            box = held.get(share.owner)
            if (
                share.owner not in mine
                or share.owner not in survivors | dropped
                or box is None
                or share.kind != kind
                or share.owner in seen
                or len(share.share) != SHARE_BYTES
            ):
                raise _bad(f"site {me.site_index} revealed a share of site {share.owner} it may not reveal")
            seen.add(share.owner)
            box.revealed_kind, box.revealed_x, box.revealed_share = share.kind, share.x, share.share
