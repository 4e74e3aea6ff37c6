"""`sites add|list|revoke|rotate-token`, `workers`, `status`, `watch`: human and --json output."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from admin.client import AdminClient
from fedtune.v1 import admin_pb2
from tests.admin.fake_admin import T0, FakeAdmin
from tests.admin.harness import AdminRun

Admin = Callable[..., AdminRun]


def test_sites_add_prints_the_token_once_with_a_worker_hint(admin: Admin, fake: FakeAdmin) -> None:
    result = admin("sites", "add", "hospital-a")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("ftk_hospital-a_s3cr3t") == 2  # the token line and the example command
    assert (
        "fedtune worker run" in result.stdout
        and "--site hospital-a --token ftk_hospital-a_s3cr3t" in result.stdout
    )
    assert fake.requests("AddSite")[0].name == "hospital-a"


def test_sites_add_json_returns_name_and_token(admin: Admin) -> None:
    result = admin("--json", "sites", "add", "hospital-b")

    assert result.json == {"name": "hospital-b", "token": "ftk_hospital-b_s3cr3t"}


def test_sites_list_shows_active_and_revoked_sites(admin: Admin) -> None:
    # Execute
    human = admin("sites", "list")
    machine = admin("--json", "sites", "list")

    # Assert
    assert human.exit_code == 0, human.stderr
    lines = {line.split()[0]: line for line in human.stdout.splitlines() if line.startswith("hospital")}
    assert "active" in lines["hospital-a"] and "revoked" in lines["hospital-b"]
    assert [s["name"] for s in machine.json["sites"]] == ["hospital-a", "hospital-b"]
    assert machine.json["sites"][1]["revoked_unix"] == T0 - 60


def test_sites_revoke_sends_the_reason_and_reports_the_tasks_it_ended(admin: Admin, fake: FakeAdmin) -> None:
    # Execute
    human = admin("sites", "revoke", "hospital-a", "--reason", "token leaked")
    again = admin("sites", "revoke", "hospital-a")
    machine = admin("--json", "sites", "revoke", "nowhere")

    # Assert
    assert human.exit_code == 0, human.stderr
    assert "hospital-a revoked" in human.stdout and "2 task(s) failed" in human.stdout
    request = fake.requests("RevokeSite")[0]
    assert (request.name, request.reason) == ("hospital-a", "token leaked")
    assert again.exit_code == 5 and "already revoked" in again.stderr
    assert machine.exit_code == 3 and "no site 'nowhere'" in machine.stderr


def test_sites_rotate_token_prints_the_new_token_once_with_a_worker_hint(
    admin: Admin, fake: FakeAdmin
) -> None:
    # Execute
    human = admin("sites", "rotate-token", "hospital-a")
    machine = admin("--json", "sites", "rotate-token", "hospital-a")

    # Assert
    assert human.exit_code == 0, human.stderr
    assert human.stdout.count("ftk_hospital-a_n3w") == 2 and "no longer works" in human.stdout
    assert machine.json == {"name": "hospital-a", "token": "ftk_hospital-a_n3w"}
    assert [r.name for r in fake.requests("RotateSiteToken")] == ["hospital-a", "hospital-a"]


@pytest.mark.parametrize("command", ["list", "revoke", "rotate-token"])
def test_sites_subcommands_show_examples_in_their_help(admin: Admin, command: str) -> None:
    result = admin("sites", command, "--help")

    assert result.exit_code == 0, result.stderr
    assert "Examples:" in result.stdout and f"fedtune admin sites {command}" in result.stdout


def test_workers_lists_workers_with_their_datasets(admin: Admin) -> None:
    human = admin("workers")
    machine = admin("--json", "workers")

    assert human.exit_code == 0, human.stderr
    assert "hospital-a" in human.stdout and "busy" in human.stdout and "train=1200" in human.stdout
    assert machine.json["workers"][0]["dataset_sizes"] == {"train": 1200}
    assert machine.json["workers"][1]["state"] == "offline"


def test_status_shows_the_coordinator(admin: Admin) -> None:
    human = admin("status")
    machine = admin("--json", "status")

    assert human.exit_code == 0, human.stderr
    assert "1h 2m 5s" in human.stdout and "/srv/fedtune-data" in human.stdout
    assert machine.json["workers_online"] == 2 and machine.json["coordinator"].startswith("127.0.0.1:")


def test_watch_without_follow_prints_past_events_and_ends(admin: Admin, fake: FakeAdmin) -> None:
    result = admin("watch", "--no-follow")

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert "#3" in lines[2] and "round.committed" in lines[2] and "round 1 committed [mv-2]" in lines[2]
    (request,) = fake.requests("WatchEvents")
    assert (request.experiment_id, request.after_id, request.follow) == ("", 0, False)


def test_watch_json_prints_one_event_per_line_after_the_given_id(admin: Admin, fake: FakeAdmin) -> None:
    result = admin("--json", "watch", "exp-1", "--no-follow", "--after", "1")

    assert result.exit_code == 0, result.stderr
    assert [e["event_id"] for e in result.json_lines] == [2, 3]
    assert (
        result.json_lines[0]["kind"] == "update.accepted"
        and result.json_lines[0]["data_json"] == '{"round": 1}'
    )
    assert fake.requests("WatchEvents")[0].experiment_id == "exp-1"


def test_watch_follows_live_events_by_default(admin: Admin, fake: FakeAdmin) -> None:
    fake.live_events = [
        admin_pb2.Event(event_id=4, created_unix=T0 + 9, experiment_id="exp-1", kind="round.opened")
    ]

    result = admin("--json", "watch")

    assert [e["event_id"] for e in result.json_lines] == [1, 2, 3, 4]
    assert fake.requests("WatchEvents")[0].follow is True


def test_watch_ends_with_exit_0_on_ctrl_c_and_cancels_the_stream(
    admin: Admin, fake: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the stream stays open after the events; Ctrl-C arrives while the CLI waits for the next one.
    fake.block_after_live = True
    fake.live_events = [admin_pb2.Event(event_id=4, experiment_id="exp-1", kind="round.opened")]
    real_watch = AdminClient.watch_events

    def watch_then_ctrl_c(
        self: AdminClient, *args: Any, **kwargs: Any
    ) -> Generator[admin_pb2.Event, None, None]:
        stream = real_watch(self, *args, **kwargs)
        try:
            for event in stream:
                yield event
                if event.event_id == 4:
                    raise KeyboardInterrupt
        finally:
            stream.close()

    monkeypatch.setattr(AdminClient, "watch_events", watch_then_ctrl_c)

    # Execute
    result = admin("--json", "watch")

    # Assert
    assert result.exit_code == 0, result.stderr
    assert [e["event_id"] for e in result.json_lines] == [1, 2, 3, 4]
    assert fake.watch_cancelled.wait(timeout=5)
