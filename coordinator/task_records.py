"""What a leased task tells its worker (``TaskRecord``), with the parts shared by a round's tasks cached.

Every task of a round carries the same stage name, round number, spec (with the strategy's client
overrides merged: a spec parse and a strategy build), model manifest (a JSON parse) and base version.
Those come from rows that never change once the task exists (an experiment's spec, a round's number,
a version's manifest, the global stages before a running stage), so they are read and built once per
(experiment, stage, round, model version) instead of once per lease: a thousand sites leasing one
round's tasks no longer parse the spec and the manifest a thousand times (docs/decisions.md 42).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from typing import Any

from coordinator.secagg.payload import secagg_payload
from coordinator.stages import base_version_for_stage
from coordinator.strategies.registry import build_strategy
from fedtune.serde import TaskRecord
from fedtune.spec import load_spec_json
from fedtune.tensorstream.manifest import Manifest
from storage import models
from storage.uow import UnitOfWork

# Distinct (experiment, stage, round, version) keys kept: a few per live experiment are enough.
CACHED_TEMPLATES = 256
_Key = tuple[str, int, str | None, str | None]


def spec_json_for_stage(spec_json: str, stage_index: int) -> str:
    """The spec with the stage strategy's client-side overrides merged into the stage's training."""
    spec = load_spec_json(spec_json)
    stage = spec.stages[stage_index]
    overrides = build_strategy(stage.strategy.name, dict(stage.strategy.options)).client_training_overrides()
    doc: dict[str, Any] = json.loads(spec_json)
    if overrides:
        training = spec.training_for(stage_index).model_dump(mode="json")
        training.update(overrides)
        doc["stages"][stage_index]["training"] = training
    return json.dumps(doc)


class TaskRecords:
    def __init__(self, capacity: int = CACHED_TEMPLATES) -> None:
        self._capacity = capacity
        # the shared record, and whether its experiment runs secure aggregation (then each task carries
        # its own per-site, per-step part: coordinator/secagg/payload.py)
        self._templates: OrderedDict[_Key, tuple[TaskRecord, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, uow: UnitOfWork, task: models.Task) -> TaskRecord:
        """The task's record; the shared part from the cache, or read with `uow` and cached."""
        key = (task.experiment_id, task.stage_index, task.round_id, task.model_version_id)
        with self._lock:
            cached = self._templates.get(key)
            if cached is not None:
                self._templates.move_to_end(key)
        if cached is None:
            cached = self._template(uow, task)
            with self._lock:
                self._templates[key] = cached
                while len(self._templates) > self._capacity:
                    self._templates.popitem(last=False)
        template, secure = cached
        return dataclasses.replace(
            template,
            task_id=task.id,
            kind=task.kind,
            deadline_unix=task.deadline_at,
            secagg=secagg_payload(uow, task) if secure else None,  # no registry read for a plain round
        )

    @staticmethod
    def _template(uow: UnitOfWork, task: models.Task) -> tuple[TaskRecord, bool]:
        experiment = uow.experiments.get(task.experiment_id)
        assert experiment is not None
        stage = uow.stages.get(task.experiment_id, task.stage_index)
        rnd = uow.rounds.get(task.round_id) if task.round_id else None
        version = uow.versions.get(task.model_version_id) if task.model_version_id else None
        secure = load_spec_json(experiment.spec_json).privacy.secure_aggregation
        return TaskRecord(
            task_id="",
            kind=task.kind,
            experiment_id=task.experiment_id,
            stage=stage.name,
            stage_index=task.stage_index,
            round=rnd.round if rnd is not None else 0,
            spec_json=spec_json_for_stage(experiment.spec_json, task.stage_index),
            model_version_id=task.model_version_id or "",
            model_manifest=Manifest.from_json(version.manifest) if version is not None else None,
            deadline_unix=0.0,
            update_kind="weights",
            base_version_id=base_version_for_stage(uow, task.experiment_id, task.stage_index) or "",
        ), secure
