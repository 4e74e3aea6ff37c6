"""`experiment …`, `round …`, `rounds`: human and --json output, requests sent, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.admin.fake_admin import FakeAdmin
from tests.admin.harness import AdminRun

Admin = Callable[..., AdminRun]
SPEC = "name: demo\nbase_model: {name: tiny-bert}\nstages:\n  - kind: finetune\n    rounds: 2\n"


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def test_submit_sends_the_yaml_and_prints_the_new_id(admin: Admin, fake: FakeAdmin, spec_file: Path) -> None:
    result = admin("experiment", "submit", str(spec_file))

    assert result.exit_code == 0, result.stderr
    assert "exp-new" in result.stdout and "fedtune admin experiment start exp-new" in result.stdout
    (request,) = fake.requests("SubmitExperiment")
    assert request.spec_yaml == SPEC and request.start is False


def test_submit_with_start_and_json_returns_the_experiment(
    admin: Admin, fake: FakeAdmin, spec_file: Path
) -> None:
    result = admin("--json", "experiment", "submit", str(spec_file), "--start")

    assert result.exit_code == 0, result.stderr
    assert result.json["experiment_id"] == "exp-new" and result.json["state"] == "running"
    assert fake.requests("SubmitExperiment")[0].start is True


def test_submit_reads_the_spec_from_stdin_with_dash(admin: Admin, fake: FakeAdmin) -> None:
    result = admin("--json", "experiment", "submit", "-", input=SPEC)

    assert result.exit_code == 0, result.stderr
    assert fake.requests("SubmitExperiment")[0].spec_yaml == SPEC


def test_submit_of_a_missing_file_is_a_usage_error_naming_it(
    admin: Admin, fake: FakeAdmin, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yaml"

    result = admin("experiment", "submit", str(missing))

    assert result.exit_code == 2
    assert "nope.yaml" in result.stderr and "does not exist" in result.stderr
    assert fake.calls == []


def test_submit_of_an_undecodable_file_is_a_usage_error(admin: Admin, tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")

    result = admin("experiment", "submit", str(path))

    assert result.exit_code == 2 and "cannot read" in result.stderr and "bin.yaml" in result.stderr


def test_submit_rejected_by_the_server_shows_the_field_path_and_exits_5(
    admin: Admin, fake: FakeAdmin, spec_file: Path
) -> None:
    details = "invalid_spec: stages.0.rounds: Input should be greater than or equal to 1"
    fake.fail["SubmitExperiment"] = (grpc.StatusCode.INVALID_ARGUMENT, details)

    result = admin("experiment", "submit", str(spec_file))

    assert result.exit_code == 5
    assert result.stderr.strip() == f"Error: {details}"
    assert result.stdout == ""


def test_list_shows_a_table_and_json(admin: Admin) -> None:
    human = admin("experiment", "list")
    machine = admin("--json", "experiment", "list")

    assert human.exit_code == 0, human.stderr
    assert "exp-1" in human.stdout and "running" in human.stdout and "completed" in human.stdout
    assert [e["experiment_id"] for e in machine.json["experiments"]] == ["exp-1", "exp-2"]
    assert machine.json["experiments"][0]["latest_model_version_id"] == "mv-2"


def test_list_with_no_experiments_says_how_to_submit(admin: Admin, fake: FakeAdmin) -> None:
    fake.experiments.clear()

    result = admin("experiment", "list")

    assert result.exit_code == 0 and "experiment submit" in result.stdout
    assert admin("--json", "experiment", "list").json == {"experiments": []}


def test_show_prints_details_and_spec(admin: Admin) -> None:
    human = admin("experiment", "show", "exp-1")
    machine = admin("--json", "experiment", "show", "exp-1")

    assert human.exit_code == 0, human.stderr
    assert "exp-1" in human.stdout and "name: demo" in human.stdout and "1:finetune" in human.stdout
    assert machine.json["spec_yaml"].startswith("name: demo") and machine.json["current_round"] == 2


def test_show_of_an_unknown_experiment_exits_3_with_the_servers_message(admin: Admin) -> None:
    result = admin("experiment", "show", "exp-missing")

    assert result.exit_code == 3
    assert result.stderr.strip() == "Error: not_found: no experiment 'exp-missing'"


@pytest.mark.parametrize("group", ["experiment", "round"])
@pytest.mark.parametrize(
    ("verb", "rpc", "state"),
    [
        ("start", "StartExperiment", "running"),
        ("pause", "PauseExperiment", "paused"),
        ("resume", "ResumeExperiment", "running"),
        ("abort", "AbortExperiment", "aborted"),
    ],
)
def test_lifecycle_commands_call_their_rpc_with_the_reason(
    admin: Admin, fake: FakeAdmin, group: str, verb: str, rpc: str, state: str
) -> None:
    past = {"start": "started", "pause": "paused", "resume": "resumed", "abort": "aborted"}[verb]

    human = admin(group, verb, "exp-1", "--reason", "site b [maintenance]")
    machine = admin("--json", group, verb, "exp-1")

    assert human.exit_code == 0, human.stderr
    assert f"exp-1 {past}: state {state}" in human.stdout
    assert f"state {state}" in human.stdout
    assert machine.json["state"] == state
    first, second = fake.requests(rpc)
    assert (first.experiment_id, first.reason) == ("exp-1", "site b [maintenance]")
    assert second.reason == ""


def test_a_wrong_state_transition_exits_5(admin: Admin, fake: FakeAdmin) -> None:
    fake.fail["ResumeExperiment"] = (grpc.StatusCode.FAILED_PRECONDITION, "wrong_state: exp-2 is completed")

    result = admin("round", "resume", "exp-2")

    assert result.exit_code == 5 and "wrong_state: exp-2 is completed" in result.stderr


def test_rounds_lists_rounds_with_compact_metrics(admin: Admin) -> None:
    human = admin("rounds", "exp-1")
    machine = admin("--json", "rounds", "exp-1")

    assert human.exit_code == 0, human.stderr
    assert (
        "accuracy=0.8123 loss=0.41" in human.stdout and "3/3" in human.stdout and "collecting" in human.stdout
    )
    assert machine.json["experiment_id"] == "exp-1"
    assert [r["round"] for r in machine.json["rounds"]] == [1, 2]
    assert machine.json["rounds"][0]["metrics"] == {"accuracy": 0.812345, "loss": 0.41}


def test_rounds_sites_lists_each_sites_update_and_json_always_has_them(admin: Admin) -> None:
    plain = admin("rounds", "exp-1")
    human = admin("rounds", "exp-1", "--sites")
    machine = admin("--json", "rounds", "exp-1")

    assert human.exit_code == 0, human.stderr
    assert "hospital-a" not in plain.stdout
    assert "updates by site" in human.stdout and "hospital-a" in human.stdout
    assert "accuracy=0.9" in human.stdout and "1.3 MiB" in human.stdout
    (update,) = machine.json["rounds"][0]["site_updates"]
    assert update == {
        "site": "hospital-a",
        "num_examples": 120,
        "weight": 120.0,
        "metrics": {"accuracy": 0.9},
        "received_bytes": 1_359_380,
        "state": "folded",
    }


def test_round_help_says_rounds_are_scheduled_per_experiment(admin: Admin) -> None:
    result = admin("round", "--help")

    assert result.exit_code == 0 and "scheduled per experiment" in result.stdout
