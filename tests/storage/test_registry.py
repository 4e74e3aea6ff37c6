"""store_model_version: blobs durable first, then the row, in one unit of work; lineage queries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from fedtune.errors import ErrorCode, FedtuneError
from storage.blobs import LocalBlobStore
from storage.models import Event, ModelVersion, Round, now
from storage.registry import (
    events_after,
    latest_model_version,
    list_model_versions,
    model_version_lineage,
    record_event,
    referenced_blob_digests,
    store_model_version,
)
from storage.uow import SqlUnitOfWork, UnitOfWorkFactory

TENSORS = b"safetensors bytes" * 64
ADAPTER_CONFIG = b'{"peft_type": "LORA", "r": 8}'


def _store(
    uow_factory: UnitOfWorkFactory,
    blobs: LocalBlobStore,
    tmp_path: Path,
    experiment_id: str,
    **overrides: Any,
) -> ModelVersion:
    tensors_path = tmp_path / f"v{overrides.get('version', 0)}.safetensors"
    if not tensors_path.exists():
        tensors_path.write_bytes(TENSORS + str(overrides.get("version", 0)).encode())
    arguments: dict[str, Any] = dict(
        tensors_path=tensors_path,
        files={"adapter_config.json": ADAPTER_CONFIG},
        experiment_id=experiment_id,
        version=0,
        parent_id=None,
        stage_index=0,
        stage_name="finetune",
        round=0,
        kind="adapter",
        manifest={"tensors": [{"name": "lora_A", "dtype": "F32", "shape": [8, 4]}]},
        metrics={"eval_loss": 1.5},
        sites=["hospital-a", "hospital-b"],
        num_examples=120,
    )
    arguments.update(overrides)
    if "experiment" in arguments:  # a test naming another experiment than the fixture's
        arguments["experiment_id"] = arguments.pop("experiment")
    return store_model_version(uow_factory, blobs, **arguments)


def _version_count(uow_factory: UnitOfWorkFactory) -> int:
    with uow_factory() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(ModelVersion)) or 0)


def test_stores_row_and_blobs(
    uow_factory: UnitOfWorkFactory, blobs: LocalBlobStore, tmp_path: Path, experiment_id: str
) -> None:
    row = _store(uow_factory, blobs, tmp_path, experiment_id)

    with uow_factory() as uow:
        stored = uow.session.get(ModelVersion, row.id)
        assert stored is not None
        assert stored.id.startswith("mv-")
        assert stored.blob_digest == hashlib.sha256(TENSORS + b"0").hexdigest()
        assert stored.files == {"adapter_config.json": hashlib.sha256(ADAPTER_CONFIG).hexdigest()}
        assert stored.sites == ["hospital-a", "hospital-b"] and stored.metrics == {"eval_loss": 1.5}
    assert blobs.open(row.blob_digest).read() == TENSORS + b"0"
    assert blobs.open(row.files["adapter_config.json"]).read() == ADAPTER_CONFIG


def test_move_consumes_the_tensors_file(
    uow_factory: UnitOfWorkFactory, blobs: LocalBlobStore, tmp_path: Path, experiment_id: str
) -> None:
    source = tmp_path / "round.safetensors"
    source.write_bytes(TENSORS)

    row = _store(uow_factory, blobs, tmp_path, experiment_id, tensors_path=source, move=True)

    assert not source.exists()
    assert blobs.local_path(row.blob_digest).read_bytes() == TENSORS


def test_extra_runs_in_the_same_transaction(
    uow_factory: UnitOfWorkFactory, blobs: LocalBlobStore, tmp_path: Path, experiment_id: str
) -> None:
    # Prepare: an aggregating round that the commit should close
    with uow_factory() as uow:
        uow.session.add(
            Round(
                id="r-1",
                experiment_id=experiment_id,
                stage_index=0,
                round=1,
                state="aggregating",
                deadline_at=now() + 60,
            )
        )
        uow.commit()

    def close_round(uow: SqlUnitOfWork, row: ModelVersion) -> None:
        round_row = uow.session.get(Round, "r-1")
        assert round_row is not None
        round_row.state, round_row.model_version_id = "committed", row.id
        record_event(uow, "round.committed", "round 1 committed", experiment_id, {"version": row.id})

    row = _store(uow_factory, blobs, tmp_path, experiment_id, extra=close_round)

    with uow_factory() as uow:
        round_row = uow.session.get(Round, "r-1")
        assert round_row is not None and (round_row.state, round_row.model_version_id) == (
            "committed",
            row.id,
        )
        assert [e.kind for e in events_after(uow, experiment_id=experiment_id)] == ["round.committed"]


def test_failing_extra_commits_nothing(
    uow_factory: UnitOfWorkFactory, blobs: LocalBlobStore, tmp_path: Path, experiment_id: str
) -> None:
    def fail(uow: SqlUnitOfWork, row: ModelVersion) -> None:
        record_event(uow, "never", "rolled back", experiment_id)
        raise RuntimeError("strategy state could not be saved")

    with pytest.raises(RuntimeError):
        _store(uow_factory, blobs, tmp_path, experiment_id, extra=fail)

    assert _version_count(uow_factory) == 0
    with uow_factory() as uow:
        assert uow.session.scalar(select(func.count()).select_from(Event)) == 0


def test_missing_tensors_file_leaves_no_row_and_no_blob(
    uow_factory: UnitOfWorkFactory, blobs: LocalBlobStore, tmp_path: Path, experiment_id: str
) -> None:
    with pytest.raises(FedtuneError) as err:
        _store(uow_factory, blobs, tmp_path, experiment_id, tensors_path=tmp_path / "absent.safetensors")

    assert err.value.code is ErrorCode.NOT_FOUND
    assert _version_count(uow_factory) == 0
    assert list(blobs.iter_digests()) == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"experiment": "exp-missing"}, ErrorCode.NOT_FOUND),
        ({"parent_id": "mv-missing", "version": 1}, ErrorCode.NOT_FOUND),
        ({"kind": "checkpoint"}, ErrorCode.INVALID_ARGUMENT),
        ({"files": {"../escape.json": b"{}"}}, ErrorCode.INVALID_ARGUMENT),
    ],
)
def test_rejects_bad_input_without_a_row(
    uow_factory: UnitOfWorkFactory,
    blobs: LocalBlobStore,
    tmp_path: Path,
    experiment_id: str,
    overrides: dict[str, Any],
    code: ErrorCode,
) -> None:
    with pytest.raises(FedtuneError) as err:
        _store(uow_factory, blobs, tmp_path, experiment_id, **overrides)

    assert err.value.code is code
    assert _version_count(uow_factory) == 0


def test_rejects_a_version_number_already_taken(
    uow_factory: UnitOfWorkFactory, blobs: LocalBlobStore, tmp_path: Path, experiment_id: str
) -> None:
    first = _store(uow_factory, blobs, tmp_path, experiment_id)

    with pytest.raises(FedtuneError) as err:
        _store(uow_factory, blobs, tmp_path, experiment_id, metrics={"other": 1})

    assert err.value.code is ErrorCode.ALREADY_EXISTS and first.id in err.value.message
    assert _version_count(uow_factory) == 1


def test_lineage_runs_from_root_to_version_and_latest_is_highest(
    uow_factory: UnitOfWorkFactory, blobs: LocalBlobStore, tmp_path: Path, experiment_id: str
) -> None:
    # Prepare: v0 -> round 1 -> round 2, plus a branch off round 1 (a later stage)
    base = _store(uow_factory, blobs, tmp_path, experiment_id)
    round1 = _store(uow_factory, blobs, tmp_path, experiment_id, version=1, parent_id=base.id, round=1)
    round2 = _store(uow_factory, blobs, tmp_path, experiment_id, version=2, parent_id=round1.id, round=2)
    personal = _store(
        uow_factory,
        blobs,
        tmp_path,
        experiment_id,
        version=3,
        parent_id=round1.id,
        stage_index=1,
        stage_name="personalize",
    )

    with uow_factory() as uow:
        assert [v.id for v in model_version_lineage(uow, round2.id)] == [base.id, round1.id, round2.id]
        assert [v.id for v in model_version_lineage(uow, personal.id)] == [base.id, round1.id, personal.id]
        assert latest_model_version(uow, experiment_id).id == personal.id  # type: ignore[union-attr]
        assert latest_model_version(uow, experiment_id, stage_index=0).id == round2.id  # type: ignore[union-attr]
        assert latest_model_version(uow, "exp-none") is None
        assert [v.version for v in list_model_versions(uow, experiment_id)] == [0, 1, 2, 3]
        assert referenced_blob_digests(uow) == set(blobs.iter_digests())


def test_lineage_of_unknown_version_is_not_found(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow, pytest.raises(FedtuneError) as err:
        model_version_lineage(uow, "mv-unknown")

    assert err.value.code is ErrorCode.NOT_FOUND


def test_record_event_is_committed_only_with_its_unit_of_work(
    uow_factory: UnitOfWorkFactory, experiment_id: str
) -> None:
    with uow_factory() as uow:
        record_event(uow, "experiment.started", "dropped", experiment_id)
    with uow_factory() as uow:
        first = record_event(uow, "experiment.started", "kept", experiment_id, {"rounds": 3})
        second = record_event(uow, "site.joined", "other experiment")
        uow.commit()

    with uow_factory() as uow:
        assert [e.message for e in events_after(uow)] == ["kept", "other experiment"]
        assert [e.id for e in events_after(uow, first.id)] == [second.id]
        assert [e.data for e in events_after(uow, experiment_id=experiment_id)] == [{"rounds": 3}]
