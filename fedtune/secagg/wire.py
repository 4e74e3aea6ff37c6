"""The secure-aggregation messages of worker.proto and their domain records (one seam, paired functions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.keys import SitePublic
from fedtune.secagg.recovery import RevealedShare
from fedtune.secagg.site import RoundSetup
from fedtune.spec import ExperimentSpec
from fedtune.v1 import worker_pb2

SECAGG_TASK_KINDS = ("secagg_advertise", "secagg_share", "secagg_unmask")


@dataclass(frozen=True)
class SecAggTaskRecord:
    """What a secagg step (or a secagg round's train task) carries: ``worker_pb2.SecAggTask``."""

    round_id: str
    site_index: int
    num_sites: int
    sites: dict[int, SitePublic] = field(default_factory=dict)
    graph_seed: bytes = b""
    boxes: dict[int, bytes] = field(default_factory=dict)
    survivors: frozenset[int] = frozenset()
    dropped: frozenset[int] = frozenset()

    def setup(self, spec: ExperimentSpec, experiment_id: str) -> RoundSetup:
        """The round's public parameters, derived from the spec (never taken from the coordinator)."""
        secagg = spec.privacy.secagg
        if not spec.privacy.secure_aggregation:
            raise FedtuneError(ErrorCode.INVALID_SPEC, "a secagg task for a spec without secure_aggregation")
        return RoundSetup.of(
            experiment_id=experiment_id,
            round_id=self.round_id,
            num_sites=self.num_sites,
            clip_range=secagg.clip_range,
            max_weight=secagg.max_weight,
            neighbours=secagg.neighbours,
            threshold=secagg.threshold,
        )


def keys_to_proto(index: int, public: SitePublic) -> worker_pb2.SecAggKeys:
    return worker_pb2.SecAggKeys(
        site_index=index,
        cipher_key=public.cipher_key,
        mask_key=public.mask_key,
        seed_commitment=public.seed_commitment,
    )


def keys_from_proto(msg: worker_pb2.SecAggKeys) -> tuple[int, SitePublic]:
    """(site index, public keys); INVALID_ARGUMENT unless each key has 32 bytes."""
    return msg.site_index, SitePublic(
        cipher_key=bytes(msg.cipher_key),
        mask_key=bytes(msg.mask_key),
        seed_commitment=bytes(msg.seed_commitment),
    )


def secagg_task_to_proto(rec: SecAggTaskRecord) -> worker_pb2.SecAggTask:
    return worker_pb2.SecAggTask(
        round_id=rec.round_id,
        site_index=rec.site_index,
        num_sites=rec.num_sites,
        sites=[keys_to_proto(i, p) for i, p in sorted(rec.sites.items())],
        graph_seed=rec.graph_seed,
        boxes=dict(rec.boxes),
        survivors=sorted(rec.survivors),
        dropped=sorted(rec.dropped),
    )


def secagg_task_from_proto(msg: worker_pb2.SecAggTask) -> SecAggTaskRecord:
    return SecAggTaskRecord(
        round_id=msg.round_id,
        site_index=msg.site_index,
        num_sites=msg.num_sites,
        sites=dict(keys_from_proto(k) for k in msg.sites),
        graph_seed=bytes(msg.graph_seed),
        boxes={int(k): bytes(v) for k, v in msg.boxes.items()},
        survivors=frozenset(int(s) for s in msg.survivors),
        dropped=frozenset(int(s) for s in msg.dropped),
    )


def revealed_to_proto(shares: Iterable[RevealedShare]) -> list[worker_pb2.SecAggRevealedShare]:
    return [
        worker_pb2.SecAggRevealedShare(owner=s.owner, x=s.x, mask_key=s.kind == "mask_key", share=s.share)
        for s in shares
    ]


def revealed_from_proto(msgs: Iterable[worker_pb2.SecAggRevealedShare], holder: int) -> list[RevealedShare]:
    return [
        RevealedShare(
            owner=m.owner,
            holder=holder,
            x=m.x,
            kind="mask_key" if m.mask_key else "seed",
            share=bytes(m.share),
        )
        for m in msgs
    ]


def boxes_from_proto(boxes: Mapping[int, bytes]) -> dict[int, bytes]:
    return {int(k): bytes(v) for k, v in boxes.items()}
