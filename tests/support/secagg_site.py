"""A scripted site of a secure-aggregation round: a FakeWorker (real stubs) answering each step with the
worker daemon's own ``SiteSecAgg`` (worker/secagg.py) and masking scripted updates with ``SiteRound``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtune.secagg.site import MASKED_TENSOR, SiteRound
from fedtune.serde import TaskRecord, task_from_proto
from fedtune.spec import load_spec_json
from fedtune.v1 import worker_pb2
from tests.support.fake_worker import FakeWorker
from worker.secagg import SiteSecAgg


@dataclass
class SecAggFakeSite:
    worker: FakeWorker
    state_dir: Path

    def pull(self, wait_seconds: float = 0.2) -> TaskRecord | None:
        task = self.worker.pull(wait_seconds=wait_seconds)
        return task_from_proto(task) if task is not None else None

    def _round(self, task: TaskRecord) -> SiteRound:
        return SiteRound(SiteSecAgg(self.state_dir).state_path(task))

    def answer(self, task: TaskRecord) -> None:
        """Answer an advertise, share or unmask task through SubmitSecAgg, as the daemon does."""
        request = SiteSecAgg(self.state_dir).answer(task, load_spec_json(task.spec_json))
        self.worker.stub.SubmitSecAgg(request, metadata=self.worker.metadata, timeout=10)

    def masked(self, task: TaskRecord, update: Mapping[str, np.ndarray], num_examples: int) -> np.ndarray:
        record = task.secagg
        assert task.kind == "train" and record is not None
        setup = record.setup(load_spec_json(task.spec_json), task.experiment_id)
        return self._round(task).mask(
            setup, record.site_index, record.sites, record.graph_seed, update, float(num_examples)
        )

    def push_masked(
        self, task: TaskRecord, update: Mapping[str, np.ndarray], num_examples: int, **kwargs: object
    ) -> worker_pb2.PushUpdateResponse:
        masked = self.masked(task, update, num_examples)
        return self.worker.push(task.task_id, {MASKED_TENSOR: masked}, num_examples=num_examples, **kwargs)
