"""Site data stays at the site: spec paths are confined to the data root, errors never quote data.

Issue 9, finding 1: a spec's `data.train` could be `../x.jsonl` or `/etc/passwd`, and with
`label_field: text` the worker's error quoted a whole record, which the coordinator stored and showed
in the `task.failed` event. Decision 24 (docs/decisions.md).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.sanitize import ERROR_TEXT_LIMIT, EVENT_MESSAGE_LIMIT, TRUNCATION_MARKER, public_text
from fedtune.spec import MAX_SITE_PATH_CHARS, DataSpec, parse_spec
from fedtune.v1 import admin_pb2
from tests.support.cluster import Admin, Cluster, make_settings, spec_yaml
from tests.support.flow import submit
from tests.support.waiting import wait_for
from worker.daemon import failure_report
from worker.data import data_file, load_examples
from worker.retry import RpcFailure

SECRET = "SECRET-PATIENT-NAME-123"
LABELS = ["sport", "business"]
ESCAPING_NAMES = ["../x.jsonl", "/etc/passwd", "a/../../x", "..\\x.jsonl", "C:\\data\\x.jsonl", "x\0.jsonl"]
BASE_SPEC: dict[str, Any] = {
    "name": "t",
    "base_model": {"name": "tiny-bert"},
    "labels": LABELS,
    "stages": [{"kind": "finetune"}],
}


def _control_characters(text: str) -> list[str]:
    return [ch for ch in text if ord(ch) < 32 or 127 <= ord(ch) < 160]


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    """A real coordinator over gRPC on 127.0.0.1 (SQLite, and PostgreSQL when configured)."""
    made = Cluster(make_settings(tmp_path / "coordinator", database_url))
    yield made
    made.stop()


# ------------------------------------------------------------------ confinement: the coordinator's spec
@pytest.mark.parametrize("field", ["train", "eval", "unlabelled"])
@pytest.mark.parametrize("name", [*ESCAPING_NAMES, "x" * (MAX_SITE_PATH_CHARS + 1)])
def test_spec_refuses_data_paths_that_leave_the_data_root(field: str, name: str) -> None:
    # Execute
    with pytest.raises(FedtuneError) as err:
        parse_spec({**BASE_SPEC, "data": {field: name}})
    # Assert
    assert err.value.code is ErrorCode.INVALID_SPEC
    assert f"data.{field}" in err.value.message


def test_spec_accepts_relative_data_paths_in_sub_folders() -> None:
    spec = parse_spec({**BASE_SPEC, "data": {"train": "2024/train.jsonl", "eval": "./eval.csv"}})
    assert (spec.data.train, spec.data.eval) == ("2024/train.jsonl", "./eval.csv")


def test_spec_refuses_a_model_name_that_leaves_the_model_root() -> None:
    with pytest.raises(FedtuneError, match=r"base_model.name: .*'\.\.'") as err:
        parse_spec({**BASE_SPEC, "base_model": {"name": "../../home/other/model"}})
    assert err.value.code is ErrorCode.INVALID_SPEC


@pytest.mark.parametrize("name", ["../x.jsonl", "/etc/passwd", "a/../../x"])
def test_submit_refuses_a_data_path_outside_the_data_root(cluster: Cluster, name: str) -> None:
    # Prepare
    admin = cluster.admin()
    spec = spec_yaml(min_sites=1).replace(
        "task: causal-lm", f"task: causal-lm\ndata: {{train: {json.dumps(name)}}}"
    )
    # Execute
    with pytest.raises(grpc.RpcError) as err:
        submit(admin, spec)
    # Assert
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "data.train" in (err.value.details() or "")
    assert not admin.ListExperiments(admin_pb2.ListExperimentsRequest()).experiments


# ------------------------------------------------------------------ confinement: the worker's loader
@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_worker_loader_refuses_names_outside_the_data_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(FedtuneError) as err:
        data_file(tmp_path, name)
    assert err.value.code is ErrorCode.INVALID_SPEC


def test_worker_loader_refuses_a_symlink_that_leads_out_of_the_data_root(tmp_path: Path) -> None:
    # Prepare: a file and a folder outside the data root, linked from inside it
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.jsonl").write_text(json.dumps({"text": SECRET, "label": "sport"}) + "\n")
    (root / "train.jsonl").symlink_to(outside / "secret.jsonl")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    # Execute + Assert
    for name in ("train.jsonl", "linked/secret.jsonl"):
        with pytest.raises(FedtuneError, match="outside the data root") as err:
            data_file(root, name)
        assert err.value.code is ErrorCode.PERMISSION_DENIED


def test_worker_loader_follows_a_symlink_that_stays_inside_the_data_root(tmp_path: Path) -> None:
    (tmp_path / "2024").mkdir()
    (tmp_path / "2024" / "train.jsonl").write_text('{"text": "a", "label": "sport"}\n')
    (tmp_path / "train.jsonl").symlink_to(tmp_path / "2024" / "train.jsonl")
    assert data_file(tmp_path, "train.jsonl") == (tmp_path / "2024" / "train.jsonl").resolve()


def test_worker_train_task_refuses_a_spec_that_skipped_validation(tmp_path: Path) -> None:
    # Prepare: a hostile coordinator's spec, built without validation, naming a file beside the data root
    from tests.fixtures.tiny import tiny_spec
    from worker import tasks

    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": SECRET, "label": SECRET}) + "\n")
    spec = tiny_spec().model_copy(update={"data": DataSpec.model_construct(train="../x.jsonl", eval=None)})
    # Execute
    with pytest.raises(FedtuneError) as err:
        tasks.run_train(spec, 0, 1, tmp_path / "global.safetensors", root, tmp_path / "models")
    # Assert: refused before anything was read
    assert err.value.code is ErrorCode.INVALID_SPEC and SECRET not in str(err.value)


# ------------------------------------------------------------------ no data value in a site's errors
BAD_RECORDS = {
    "label not in labels": json.dumps({"text": "ok", "label": SECRET}),
    "label_field pointing at the text": json.dumps({"text": SECRET, "label": SECRET}),
    "label of the wrong type": json.dumps({"text": "ok", "label": [SECRET]}),
    "label id out of range": json.dumps({"text": "ok", "label": 987654321}),
    "label that int() refuses": json.dumps({"text": "ok", "label": "--" + SECRET}),
    "label of unicode digits": json.dumps({"text": "ok", "label": "²³"}),
    "text of the wrong type": json.dumps({"text": {"name": SECRET}, "label": "sport"}),
    "broken JSON": '{"text": "' + SECRET,
    "not an object": json.dumps([SECRET]),
}


@pytest.mark.parametrize("record", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_data_errors_name_file_line_and_field_but_not_the_value(tmp_path: Path, record: str) -> None:
    # Prepare
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": "sport"}) + "\n" + record + "\n")
    # Execute
    with pytest.raises(FedtuneError) as err:
        load_examples(path, text_field="text", label_field="label", labels=LABELS)
    # Assert
    message = failure_report(err.value)
    assert f"{path}:2:" in message
    assert SECRET not in message and "987654321" not in message and "²³" not in message


def test_csv_and_encoding_errors_are_data_errors_without_the_value(tmp_path: Path) -> None:
    # Prepare: a CSV field over the parser's limit, and a file that is not UTF-8
    oversized, latin1 = tmp_path / "train.csv", tmp_path / "eval.jsonl"
    oversized.write_text(f"text,label\nok,sport\n{SECRET * 4},sport\n")
    latin1.write_bytes(b'{"text": "ok", "label": "sport"}\n{"text": "' + SECRET.encode() + b'\xe9"}\n')
    limit = csv.field_size_limit(len(SECRET) * 2)
    try:
        # Execute
        with pytest.raises(FedtuneError) as too_long:
            load_examples(oversized, text_field="text", label_field="label", labels=LABELS)
    finally:
        csv.field_size_limit(limit)
    with pytest.raises(FedtuneError) as not_utf8:
        load_examples(latin1, text_field="text")
    # Assert
    assert f"{oversized}:3: not valid CSV" in too_long.value.message
    assert f"{latin1}:" in not_utf8.value.message and "UTF-8" in not_utf8.value.message
    assert SECRET not in too_long.value.message + not_utf8.value.message


def test_worker_failure_for_a_secret_label_does_not_carry_it(tmp_path: Path) -> None:
    # Prepare: the probe, a train split whose label field holds a patient's name
    from tests.fixtures.tiny import make_tiny_model, tiny_spec
    from tests.worker.helpers import write_global
    from worker import tasks

    make_tiny_model(tmp_path / "models", "tiny-bert", "bert")
    global_path = write_global(
        tmp_path / "global.safetensors", tasks.run_init(tiny_spec(), tmp_path / "models").arrays
    )
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "notes", "label": SECRET}) + "\n")
    # Execute
    with pytest.raises(FedtuneError) as err:
        tasks.run_train(tiny_spec(), 0, 1, global_path, tmp_path, tmp_path / "models")
    report = failure_report(err.value)
    # Assert
    assert "train.jsonl:1: field 'label'" in report and SECRET not in report


@pytest.mark.parametrize(
    "error",
    [
        KeyError(SECRET),
        ValueError(f"invalid literal for int() with base 10: '{SECRET}'"),
        RuntimeError(SECRET),
    ],
)
def test_failure_report_of_a_foreign_exception_is_only_its_type(error: Exception) -> None:
    report = failure_report(error)
    assert report.startswith(type(error).__name__ + " ") and "worker log" in report
    assert SECRET not in report


def test_failure_report_keeps_our_messages_on_one_bounded_line() -> None:
    # Prepare
    ours = FedtuneError(ErrorCode.INVALID_ARGUMENT, "train.jsonl:3: field 'label' is missing\n\x1b[2J")
    refused = RpcFailure(
        "PushUpdate", grpc.StatusCode.INVALID_ARGUMENT, "too big " + "x" * 10 * ERROR_TEXT_LIMIT
    )
    # Execute
    reports = [failure_report(ours), failure_report(refused)]
    # Assert
    assert reports[0] == "invalid_argument: train.jsonl:3: field 'label' is missing [2J"
    assert reports[1].startswith("PushUpdate rejected: too big") and len(reports[1]) == ERROR_TEXT_LIMIT


# ------------------------------------------------------------------ the coordinator bounds what it keeps
def test_public_text_flattens_strips_and_truncates() -> None:
    assert public_text("a\n\tb\x00c\x1b[31m\u202ed  ", 100) == "a bc[31md"
    cut = public_text("y" * 50, 20)
    assert len(cut) == 20 and cut.endswith(TRUNCATION_MARKER)


def test_coordinator_stores_and_shows_a_sites_error_bounded_and_printable(cluster: Cluster) -> None:
    # Prepare: a hostile site's report, long and full of control characters (an init task, so that
    # the experiment fails with it and the error is shown in three places)
    admin: Admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id = submit(admin, spec_yaml(min_sites=1, sites=["a"]))
    task = wait_for(lambda: a.pull(wait_seconds=1.0))
    escapes = "\x1b]0;owned\x07" + "line\r\n\x00" * 20
    multiline = "line one\n\tline two " * 200 + "tail-that-may-be-cut"  # 3,620 characters
    # Execute
    with pytest.raises(grpc.RpcError) as refused:
        a.report(task.task_id, ok=False, error=escapes)
    a.report(task.task_id, ok=False, error=multiline)
    experiment = wait_for(lambda: (e := admin.experiment(experiment_id)).state == "failed" and e)
    events = list(
        admin.stub.WatchEvents(
            admin_pb2.WatchEventsRequest(experiment_id=experiment_id), metadata=admin.metadata, timeout=10
        )
    )
    with cluster.server.services.uow_factory() as uow:
        from storage import models

        stored = uow.session.get(models.Task, task.task_id)
        assert stored is not None
        task_error = stored.error
    # Assert: control characters are refused at the door; what passes is stored and shown as one
    # bounded, printable line
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    failed = [e for e in events if e.kind == "task.failed"]
    assert len(failed) == 1
    event_error = json.loads(failed[0].data_json)["error"]
    shown = {
        "task.error": (task_error, ERROR_TEXT_LIMIT),
        "experiment.error": (experiment.error, ERROR_TEXT_LIMIT),
        "event message": (failed[0].message, EVENT_MESSAGE_LIMIT),
        "event data": (event_error, ERROR_TEXT_LIMIT),
    }
    for where, (text, limit) in shown.items():
        assert 0 < len(text) <= limit, where
        assert not _control_characters(text) and "\n" not in text and "\t" not in text, where
    assert failed[0].message.endswith(TRUNCATION_MARKER), "an event message is cut at its limit"
