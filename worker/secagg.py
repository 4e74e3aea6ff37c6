"""This site's secure-aggregation steps (docs/privacy.md, "How the pieces fit"), on the daemon's behalf.

The secrets and the one split this site answers live in ``<work_dir>/secagg/<experiment>/<round>.json``
(``fedtune.secagg.site.SiteRound``, mode 0600), so a restarted worker still masks with the keys it
advertised and never reveals shares for a second survivor/dropped split. The file of a round is removed
once the site has revealed its shares; a round that never reaches that step leaves it until the
experiment's folder is removed.

``masked_output`` is the one place where a train task's update meets the encoder: the float update the
training code returns (already clipped, and noised when the spec asks the site to add DP noise) is
clipped to ``secagg.clip_range``, weighted, quantized and masked here, and nothing else is sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.site import MASKED_TENSOR, SiteRound
from fedtune.secagg.wire import SecAggTaskRecord, keys_to_proto, revealed_to_proto
from fedtune.serde import TaskRecord
from fedtune.spec import ExperimentSpec
from fedtune.v1 import worker_pb2
from worker.task_io import TaskOutput


class SiteSecAgg:
    """The secure-aggregation steps of one site, with their state under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def _record(self, task: TaskRecord) -> SecAggTaskRecord:
        if task.secagg is None:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"{task.kind} task {task.task_id} has no secagg part"
            )
        return task.secagg

    def state_path(self, task: TaskRecord) -> Path:
        # ids are checked door values (letters, digits, '-', '_'): safe as file names
        return self.state_dir / task.experiment_id / f"{self._record(task).round_id}.json"

    def answer(self, task: TaskRecord, spec: ExperimentSpec) -> worker_pb2.SubmitSecAggRequest:
        """The SubmitSecAgg answer to an advertise, share or unmask task."""
        record = self._record(task)
        site_round = SiteRound(self.state_path(task))
        request = worker_pb2.SubmitSecAggRequest(task_id=task.task_id)
        if task.kind == "secagg_advertise":
            request.keys.CopyFrom(keys_to_proto(record.site_index, site_round.advertise()))
            return request
        setup = record.setup(spec, task.experiment_id)
        if task.kind == "secagg_share":
            boxes = site_round.deal(setup, record.site_index, record.sites, record.graph_seed)
            request.boxes.update(boxes)
            return request
        if task.kind == "secagg_unmask":
            shares = site_round.reveal(
                setup,
                record.site_index,
                record.sites,
                record.graph_seed,
                record.boxes,
                record.survivors,
                record.dropped,
            )
            request.shares.extend(revealed_to_proto(shares))
            return request
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"{task.kind} is not a secure-aggregation step")

    def forget(self, task: TaskRecord) -> None:
        """The round's secrets are not needed after this site revealed its shares."""
        self.state_path(task).unlink(missing_ok=True)

    def masked_output(self, task: TaskRecord, spec: ExperimentSpec, output: TaskOutput) -> TaskOutput:
        """The train task's update, masked: the only form in which it leaves the site.

        ``output.arrays`` is the float update as the training code hands it over (clipped and noised
        there when the spec asks for it); its weight is the example count, capped at max_weight, or 1
        under site-level DP, whose sum is of equally weighted clipped updates (docs/decisions.md 36)."""
        record = self._record(task)
        dp = spec.privacy.dp
        weight = 1.0 if dp is not None and dp.level == "site" else float(output.num_examples)
        setup = record.setup(spec, task.experiment_id)
        masked = SiteRound(self.state_path(task)).mask(
            setup,
            record.site_index,
            record.sites,
            record.graph_seed,
            {name: np.asarray(a, dtype=np.float32) for name, a in output.arrays.items()},
            weight,
        )
        return TaskOutput(
            arrays={MASKED_TENSOR: masked}, num_examples=output.num_examples, metrics=output.metrics, files={}
        )
