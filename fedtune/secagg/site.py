"""One site's side of a secure-aggregation round, with its state kept on disk between the steps.

The round protocol (docs/privacy.md, "How the pieces fit") asks a site four things, each in its own
task: advertise fresh keys, deal sealed shares to its neighbours, send its update masked, and reveal one
share per neighbour. ``SiteRound`` answers them, and keeps what must outlive a worker restart in one
file (mode 0600): the round secrets (so a restarted worker can still mask and reveal), the graph seed it
dealt under, and the one survivor/dropped split it answered: a second, different split is refused
even after a restart (``ShareKeeper``), so a coordinator cannot obtain both of a site's secrets.

Both sides derive the round's public parameters (``RoundSetup``) from the spec and the number of
selected sites; the coordinator cannot lower the threshold or change the quantization.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.dealing import deal_shares, open_received_shares
from fedtune.secagg.graph import GraphParams, choose_graph_params, neighbour_graph
from fedtune.secagg.keys import SitePublic, SiteSecrets, round_context
from fedtune.secagg.local_round import DEFAULT_CHUNK_ELEMENTS
from fedtune.secagg.masking import WEIGHT_OFFSET, VectorLayout, mask_chunk, site_mask_keys
from fedtune.secagg.quantize import QuantizationParams, cap_weight, quantize_chunk, quantize_weight
from fedtune.secagg.recovery import RevealedShare, ShareKeeper

MASKED_TENSOR = "secagg.masked"  # the one int32 tensor a masked update carries
MASKED_DTYPE = "int32"  # uint32 elements sent as their int32 bit pattern


@dataclass(frozen=True)
class RoundSetup:
    """The public parameters of one secure-aggregation round, the same on every site and the coordinator."""

    graph: GraphParams
    quantization: QuantizationParams
    context: bytes

    @classmethod
    def of(
        cls,
        *,
        experiment_id: str,
        round_id: str,
        num_sites: int,
        clip_range: float,
        max_weight: float,
        neighbours: int | None,
        threshold: int | None,
    ) -> RoundSetup:
        return cls(
            graph=choose_graph_params(num_sites, neighbours, threshold),
            quantization=QuantizationParams(
                clip_range=clip_range, max_weight=max_weight, max_sites=num_sites
            ),
            context=round_context(experiment_id, round_id),
        )

    def neighbours(self, graph_seed: bytes) -> tuple[frozenset[int], ...]:
        return neighbour_graph(self.graph, graph_seed)


def graph_seed(context: bytes, advertised: Mapping[int, SitePublic]) -> bytes:
    """The neighbour graph's seed: a hash of the round and every advertised key, fixed only after every
    site has committed its keys, so the coordinator alone cannot place a site among chosen neighbours."""
    digest = hashlib.sha256(b"fedtune-secagg-graph-seed" + context)
    for index in sorted(advertised):
        public = advertised[index]
        digest.update(struct.pack(">I", index) + public.cipher_key + public.mask_key + public.seed_commitment)
    return digest.digest()


def masked_layout(sizes: Mapping[str, int]) -> VectorLayout:
    """Where each tensor sits in the masked vector: the weight element first, then tensors by name."""
    return VectorLayout.of(dict(sizes))


def _check_index(index: int, num_sites: int) -> None:
    if not 0 <= index < num_sites:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"site index {index} outside 0..{num_sites - 1}")


class SiteRound:
    """A site's secrets and answers for one round, persisted in ``path`` (JSON, 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._state: dict[str, object] = {}
        if self.path.is_file():
            self._state = json.loads(self.path.read_text())

    # ----------------------------------------------------------------- persistence
    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self._state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)

    def _secrets(self) -> SiteSecrets:
        stored = self._state.get("secrets")
        if not isinstance(stored, dict):
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                "this site holds no secrets for the round (its state was lost, e.g. a new work_dir); it "
                "cannot take part any more and counts as dropped",
            )
        return SiteSecrets(**{key: bytes.fromhex(value) for key, value in stored.items()})

    def _check_seed(self, seed: bytes) -> None:
        if self._state.get("graph_seed") != seed.hex():
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                "the round's graph seed differs from the one this site dealt its shares under",
            )

    # ----------------------------------------------------------------- the four steps
    def advertise(self) -> SitePublic:
        """Fresh round secrets (made once: a repeated advertise returns the same keys)."""
        if "secrets" not in self._state:
            secrets = SiteSecrets.generate()
            self._state["secrets"] = {
                "cipher_private": secrets.cipher_private.hex(),
                "mask_private": secrets.mask_private.hex(),
                "self_seed": secrets.self_seed.hex(),
            }
            self._save()
        return self._secrets().public()

    def deal(
        self, setup: RoundSetup, me: int, advertised: Mapping[int, SitePublic], seed: bytes
    ) -> dict[int, bytes]:
        """Sealed boxes for the neighbours that advertised keys, ``{holder: box}``."""
        secrets = self._secrets()
        _check_index(me, setup.graph.sites)
        if advertised.get(me) != secrets.public():
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "the round lists other keys for this site")
        if graph_seed(setup.context, advertised) != seed:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, "the graph seed does not match the advertised keys"
            )
        if self._state.get("graph_seed") not in (None, seed.hex()):
            raise FedtuneError(
                ErrorCode.WRONG_STATE, "this site already dealt its shares under another graph"
            )
        self._state["graph_seed"] = seed.hex()
        self._save()
        graph = setup.neighbours(seed)
        neighbours = {j: advertised[j] for j in graph[me] if j in advertised}
        return deal_shares(me, secrets, neighbours, setup.graph.threshold, setup.context)

    def mask(
        self,
        setup: RoundSetup,
        me: int,
        dealt: Mapping[int, SitePublic],
        seed: bytes,
        update: Mapping[str, NDArray[np.floating]],
        weight: float,
        rng: np.random.Generator | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> NDArray[np.int32]:
        """The masked vector of ``update`` (clipped, weighted, quantized, masked with the neighbours that
        dealt shares): int32 bits of the Z_2^32 elements, the weight element first.

        Once per round: a second vector under the same masks (a worker restarted mid-upload that trained
        again) would show the coordinator the difference of the two updates, so it is refused and the
        site drops out of the round (its self-mask, never revealed for a dropped site, keeps whatever
        part of the first upload arrived hidden)."""
        secrets = self._secrets()
        self._check_seed(seed)
        if self._state.get("masked"):
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                "this site already masked an update this round; a second one under the same masks would "
                "reveal the difference of the two, so the site leaves the round",
            )
        if dealt.get(me) != secrets.public():
            raise FedtuneError(
                ErrorCode.WRONG_STATE, "this site is not among the sites that dealt shares this round"
            )
        rng = rng if rng is not None else np.random.default_rng()
        graph = setup.neighbours(seed)
        keys = site_mask_keys(
            me, secrets, {j: dealt[j].mask_key for j in graph[me] if j in dealt}, setup.context
        )
        layout = masked_layout({name: int(np.asarray(a).size) for name, a in update.items()})
        weight = cap_weight(weight, setup.quantization)
        out = np.empty(layout.total, dtype=np.uint32)
        out[WEIGHT_OFFSET : WEIGHT_OFFSET + 1] = mask_chunk(
            quantize_weight(weight, setup.quantization, rng), WEIGHT_OFFSET, keys
        )
        for name in sorted(update):
            flat = np.asarray(update[name]).reshape(-1)
            for start in range(0, flat.size, chunk_elements):
                values = flat[start : start + chunk_elements]
                offset = layout.offset(name, start)
                quantized = quantize_chunk(values, weight, setup.quantization, rng)
                out[offset : offset + values.size] = mask_chunk(quantized, offset, keys)
        self._state["masked"] = True
        self._save()  # before the vector leaves: a restarted worker will not mask again
        return out.view(np.int32)

    def reveal(
        self,
        setup: RoundSetup,
        me: int,
        dealt: Mapping[int, SitePublic],
        seed: bytes,
        boxes: Mapping[int, bytes],
        survivors: Set[int],
        dropped: Set[int],
    ) -> list[RevealedShare]:
        """One share per neighbour for the split (``ShareKeeper``); the split is kept on disk before the
        shares leave, and a later, different split is refused."""
        secrets = self._secrets()
        self._check_seed(seed)
        graph = setup.neighbours(seed)
        owners = {j: dealt[j] for j in graph[me] if j in dealt}
        received = open_received_shares(
            me, secrets, {o: b for o, b in boxes.items() if o in owners}, owners, setup.context
        )
        keeper = ShareKeeper(me, received, setup.graph.threshold)
        answered = self._state.get("answered")
        if isinstance(answered, dict):  # replay the first answer, so the keeper refuses another split
            keeper.reveal(set(_ints(answered["survivors"])), set(_ints(answered["dropped"])))
        revealed = keeper.reveal(survivors, dropped)
        if answered is None:
            self._state["answered"] = {"survivors": sorted(survivors), "dropped": sorted(dropped)}
            self._save()
        return revealed


def _ints(values: object) -> list[int]:
    assert isinstance(values, Sequence)
    return [int(v) for v in values]
