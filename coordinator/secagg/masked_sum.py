"""The coordinator's side of the masked sum: fold masked updates mod 2^32, then unmask and dequantize.

``MaskedSumStrategy`` wraps a weighted-mean strategy (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam,
FedYogi). Folding is modular addition of uint32 chunks into a file (O(chunk) memory, any order, so a
restarted coordinator re-folds the spool to the same sum). At commit, ``unmask_plan`` rebuilds, from
the shares the survivors revealed (all in the registry), the survivors' self-masks and the dropped
sites' pairwise masks; the sum is unmasked chunk by chunk, dequantized into the inner strategy's
weighted sum, and the inner strategy's server step writes the new version as without secure aggregation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from coordinator.secagg.payload import advertised_keys, masked_manifest
from coordinator.strategies.base import RoundInputs, RoundResult, Strategy, UpdateInfo
from coordinator.strategies.flatfile import FlatFile
from coordinator.strategies.server_state import CHUNK_ELEMENTS
from coordinator.strategies.weighted_mean import WeightedMeanStrategy, check_file_layout
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.graph import choose_graph_params, neighbour_graph
from fedtune.secagg.keys import round_context
from fedtune.secagg.masking import WEIGHT_OFFSET, VectorLayout
from fedtune.secagg.quantize import QuantizationParams, cap_weight, dequantize_sum, dequantize_weight_sum
from fedtune.secagg.recovery import RevealedShare, ShareKind, UnmaskPlan, build_unmask_plan
from fedtune.secagg.site import masked_layout
from fedtune.spec import SecAggSpec, load_spec_json
from fedtune.tensorstream.safetensors_file import read_header
from storage.uow import UnitOfWork, UowFactory


def iter_masked(path: Path, chunk_elements: int) -> Any:
    """(start element, uint32 values) over the one tensor of a spooled masked update."""
    manifest, data_start = read_header(path)
    total = manifest.tensors[0].numel
    with open(path, "rb") as handle:
        handle.seek(data_start)
        for start in range(0, total, chunk_elements):
            count = min(chunk_elements, total - start)
            buffer = bytearray(4 * count)
            if handle.readinto(buffer) != len(buffer):
                raise FedtuneError(ErrorCode.STORAGE, f"{path} ends inside its data")
            yield start, np.frombuffer(buffer, dtype="<u4").astype(np.uint32, copy=False)


# Weights a masked sum can carry: the example count (each site masks its own, capped), or 1 under
# site-level DP (WeightedMeanStrategy's uniform weights; the site masks weight 1, worker/secagg.py).
# A strategy with any other weight (fedavg_adaptive: a distance to the global) needs each update.
SUM_WEIGHTS = (Strategy.weight, WeightedMeanStrategy.weight)


class MaskedSumStrategy(Strategy):
    """A weighted-mean strategy fed the modular sum of masked updates instead of the updates."""

    name: ClassVar[str] = "secure_aggregation"
    config_model: ClassVar[type[BaseModel]] = SecAggSpec

    def __init__(self, inner: Strategy, quantization: QuantizationParams) -> None:
        # a strategy that weighs each update by its content (fedavg_adaptive) needs the update itself
        if not isinstance(inner, WeightedMeanStrategy) or type(inner).weight not in SUM_WEIGHTS:
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"strategy {inner.name} cannot run with privacy.secure_aggregation: the coordinator sees "
                "only the weighted sum of the updates",
            )
        super().__init__(inner.config)
        self.inner = inner
        self.quantization = quantization
        self._plan: UnmaskPlan | None = None
        self._inputs: RoundInputs | None = None

    def client_training_overrides(self) -> dict[str, Any]:
        return self.inner.client_training_overrides()

    def weight(self, update: UpdateInfo, inputs: RoundInputs) -> float:
        """For the record only: the weight the site masked (its example count, capped at max_weight)."""
        return cap_weight(float(update.num_examples), self.quantization)

    def begin_round(self, inputs: RoundInputs) -> None:
        self.inner.begin_round(inputs)
        self._inputs = inputs
        self._layout: VectorLayout = masked_layout({t.name: t.numel for t in inputs.manifest.tensors})
        self._masked = masked_manifest(inputs.manifest)
        self._sum = FlatFile(inputs.workdir / "secagg-masked-sum.u32", self._layout.total, np.uint32).create()
        self._folded = 0
        self._plan = None

    def fold(self, update: UpdateInfo, weight: float) -> None:
        if self._inputs is None:
            raise FedtuneError(ErrorCode.WRONG_STATE, "call begin_round before fold")
        check_file_layout(update.path, self._masked, f"masked update from {update.site}")
        for start, values in iter_masked(update.path, CHUNK_ELEMENTS):
            current = self._sum.read(start, values.size)
            np.add(current, values, out=current)  # mod 2^32: uint32 wraps
            self._sum.write(start, current)
        self._folded += 1

    def unmask_with(self, plan: UnmaskPlan) -> None:
        self._plan = plan

    def finish_round(self) -> RoundResult:
        inputs = self._inputs
        if inputs is None or self._plan is None:
            raise FedtuneError(ErrorCode.WRONG_STATE, "secure aggregation: the sum has no unmask plan")
        if self._folded == 0:
            raise FedtuneError(ErrorCode.WRONG_STATE, "secure aggregation: no masked update was folded")
        plan, layout, q = self._plan, self._layout, self.quantization
        weight_sum = dequantize_weight_sum(
            int(plan.unmask_chunk(self._sum.read(WEIGHT_OFFSET, 1), WEIGHT_OFFSET)[0]), q
        )
        if not math.isfinite(weight_sum) or weight_sum <= 0:
            raise FedtuneError(
                ErrorCode.WRONG_STATE, f"secure aggregation: the unmasked weight sum is {weight_sum}"
            )
        position = 0  # the inner strategy's sum is in manifest order
        for tensor in inputs.manifest.tensors:
            for start in range(0, tensor.numel, CHUNK_ELEMENTS):
                count = min(CHUNK_ELEMENTS, tensor.numel - start)
                offset = layout.offset(tensor.name, start)
                plain = plan.unmask_chunk(self._sum.read(offset, count), offset)
                self.inner.fold_weighted_sum(position + start, dequantize_sum(plain, q))
            position += tensor.numel
        self.inner.count_folded(weight_sum, self._folded)
        result = self.inner.finish_round()
        self._sum.close()
        metrics = {**result.metrics, "secagg_sites": float(self._folded)}
        return RoundResult(result.new_tensors_path, result.state_path, result.state_scalars, metrics)


def quantization_for(spec: SecAggSpec, num_sites: int) -> QuantizationParams:
    return QuantizationParams(clip_range=spec.clip_range, max_weight=spec.max_weight, max_sites=num_sites)


def unmask_plan(uow: UnitOfWork, round_id: str, experiment_id: str, spec: SecAggSpec) -> UnmaskPlan:
    """The removal streams for the round's sum, from the registry (raises SecAggRecoveryError)."""
    state = uow.secagg.round(round_id)
    assert state is not None
    params = choose_graph_params(state.num_sites, spec.neighbours, spec.threshold)
    graph = neighbour_graph(params, bytes(state.graph_seed or b""))
    rows = uow.secagg.sites(round_id)
    dealt = advertised_keys([row for row in rows if row.shared_at is not None])
    revealed = [
        RevealedShare(
            owner=box.owner,
            holder=box.holder,
            x=int(box.revealed_x or 0),
            kind=_kind(box.revealed_kind),
            share=bytes(box.revealed_share or b""),
        )
        for box in uow.secagg.shares(round_id)
        if box.revealed_kind is not None
    ]
    return build_unmask_plan(
        graph,
        params.threshold,
        dealt,
        {int(i) for i in state.survivors},
        {int(i) for i in state.dropped},
        revealed,
        round_context(experiment_id, round_id),
    )


def _kind(value: str | None) -> ShareKind:
    return "mask_key" if value == "mask_key" else "seed"


def prepare_unmasking(strategy: MaskedSumStrategy, uow_factory: UowFactory, round_id: str) -> None:
    """Give the strategy what removes the masks from its sum, read from the registry at commit."""
    with uow_factory() as uow:
        rnd = uow.rounds.get(round_id)
        experiment = uow.experiments.get(rnd.experiment_id) if rnd is not None else None
        assert rnd is not None and experiment is not None
        spec = load_spec_json(experiment.spec_json).privacy.secagg
        strategy.unmask_with(unmask_plan(uow, round_id, rnd.experiment_id, spec))
