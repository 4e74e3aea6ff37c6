"""The secure-aggregation repository answers alike on SQLite, PostgreSQL and in memory: the protocol
state a restarted coordinator reads back (keys, relayed boxes, revealed shares, the split)."""

from __future__ import annotations

from collections.abc import Callable

from storage import models
from storage.uow import UnitOfWork
from tests.storage.test_repositories import NOW, _seed, uows  # noqa: F401  (the fixture)


def test_secagg_state_reads_back_by_round_index_and_holder(uows: Callable[[], UnitOfWork]) -> None:  # noqa: F811
    # Prepare
    ids = _seed(uows)
    with uows() as uow:
        uow.secagg.add(
            models.SecAggRound(round_id="r-1", phase="advertise", phase_started_at=NOW, num_sites=2)
        )
        for index, name in ((1, "b"), (0, "a")):
            uow.secagg.add(models.SecAggSite(round_id="r-1", site_index=index, site_id=ids[name]))
        uow.commit()

    # Execute
    with uows() as uow:
        state = uow.secagg.round("r-1")
        assert state is not None
        state.phase, state.graph_seed, state.survivors, state.dropped = "unmask", b"\x01" * 32, [0], [1]
        first = uow.secagg.sites("r-1")[0]
        first.mask_key, first.shared_at = b"\x02" * 32, NOW
        uow.secagg.add(models.SecAggShare(round_id="r-1", owner=1, holder=0, box=b"box-1-0"))
        uow.secagg.add(models.SecAggShare(round_id="r-1", owner=0, holder=1, box=b"box-0-1"))
        uow.commit()
    with uows() as uow:
        box = uow.secagg.shares("r-1", holder=0)[0]
        box.revealed_kind, box.revealed_x, box.revealed_share = "mask_key", 1, b"\x03" * 32
        uow.commit()

    # Assert
    with uows() as uow:
        state = uow.secagg.round("r-1")
        assert (
            state is not None and state.phase == "unmask" and bytes(state.graph_seed or b"") == b"\x01" * 32
        )
        assert list(state.survivors) == [0] and list(state.dropped) == [1]
        sites = uow.secagg.sites("r-1")
        assert [s.site_index for s in sites] == [0, 1] and sites[0].site_id == ids["a"]
        assert bytes(sites[0].mask_key or b"") == b"\x02" * 32 and sites[1].mask_key is None
        assert [(s.owner, s.holder) for s in uow.secagg.shares("r-1")] == [(0, 1), (1, 0)]
        (held,) = uow.secagg.shares("r-1", holder=0)
        assert bytes(held.box) == b"box-1-0" and held.revealed_kind == "mask_key"
        assert bytes(held.revealed_share or b"") == b"\x03" * 32
        assert uow.secagg.round("r-2") is None
