"""What a site is sent for each secure-aggregation step, and the layout its masked update must have."""

from __future__ import annotations

from collections.abc import Sequence

from fedtune.secagg.keys import SitePublic
from fedtune.secagg.site import MASKED_DTYPE, MASKED_TENSOR, masked_layout
from fedtune.secagg.wire import SecAggTaskRecord
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from storage import models
from storage.uow import UnitOfWork


def advertised_keys(rows: Sequence[models.SecAggSite]) -> dict[int, SitePublic]:
    """``{site index: public keys}`` of the rows that advertised."""
    return {
        row.site_index: SitePublic(
            cipher_key=bytes(row.cipher_key),
            mask_key=bytes(row.mask_key),
            seed_commitment=bytes(row.seed_commitment),
        )
        for row in rows
        if row.cipher_key is not None and row.mask_key is not None and row.seed_commitment is not None
    }


def masked_manifest(version_manifest: Manifest) -> Manifest:
    """The layout of a masked update of a version: one int32 vector, the weight element then every tensor."""
    total = masked_layout({t.name: t.numel for t in version_manifest.tensors}).total
    return Manifest.of([TensorSpec(name=MASKED_TENSOR, dtype=MASKED_DTYPE, shape=(total,), nbytes=4 * total)])


def secagg_payload(uow: UnitOfWork, task: models.Task) -> SecAggTaskRecord | None:
    """The task's ``SecAggTask``: None outside a secure-aggregation round."""
    state = uow.secagg.round(task.round_id) if task.round_id else None
    if state is None:
        return None
    rows = uow.secagg.sites(state.round_id)
    me = next(row.site_index for row in rows if row.site_id == task.site_id)
    if task.kind == "secagg_advertise":
        return SecAggTaskRecord(round_id=state.round_id, site_index=me, num_sites=state.num_sites)
    if task.kind == "secagg_share":
        sites = advertised_keys(rows)
    else:  # train and unmask: the sites that dealt their shares
        sites = advertised_keys([row for row in rows if row.shared_at is not None])
    boxes: dict[int, bytes] = {}
    if task.kind == "secagg_unmask":
        boxes = {
            box.owner: bytes(box.box)
            for box in uow.secagg.shares(state.round_id, holder=me)
            if box.owner in sites
        }
    return SecAggTaskRecord(
        round_id=state.round_id,
        site_index=me,
        num_sites=state.num_sites,
        sites=sites,
        graph_seed=bytes(state.graph_seed or b""),
        boxes=boxes,
        survivors=frozenset(int(i) for i in state.survivors),
        dropped=frozenset(int(i) for i in state.dropped),
    )
