"""AdminClient: token metadata, message size, and gRPC status -> one-line message + exit code."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest

from admin.client import AdminClient, AdminError, ExitCode
from tests.admin.fake_admin import FakeAdmin, FakeAdminServer
from tests.admin.harness import AdminRun, run_admin
from tests.support.ports import free_port

Admin = Callable[..., AdminRun]


def test_sends_the_admin_token_as_bearer_metadata(admin: Admin, fake: FakeAdmin) -> None:
    fake.required_token = "t0ken"

    result = admin("--json", "status", token="t0ken")

    assert result.exit_code == 0, result.stderr
    assert fake.calls[0][2]["authorization"] == "Bearer t0ken"


def test_reads_the_token_and_address_from_the_environment(
    fake: FakeAdmin, fake_server: FakeAdminServer
) -> None:
    fake.required_token = "from-env"
    env = {"FEDTUNE_ADMIN_TOKEN": "from-env", "FEDTUNE_COORDINATOR": fake_server.target}

    from_env = run_admin(None, "--json", "workers", env=env)
    flag_wins = run_admin(f"127.0.0.1:{free_port()}", "--json", "workers", env=env)

    assert from_env.exit_code == 0, from_env.stderr
    assert fake.calls[0][2]["authorization"] == "Bearer from-env"
    assert flag_wins.exit_code == 4


def test_sends_no_authorization_without_a_token(admin: Admin, fake: FakeAdmin) -> None:
    admin("status")

    assert "authorization" not in fake.calls[0][2]


def test_a_wrong_token_exits_6_with_a_hint(admin: Admin, fake: FakeAdmin) -> None:
    fake.required_token = "right"

    result = admin("experiment", "list", token="wrong")

    assert result.exit_code == 6
    assert "admin token" in result.stderr and "FEDTUNE_ADMIN_TOKEN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nothing_listening_exits_4_naming_the_address() -> None:
    target = f"127.0.0.1:{free_port()}"

    result = run_admin(target, "status")

    assert result.exit_code == 4
    assert result.stderr.strip() == (
        f"Error: cannot reach the coordinator at {target} (is `fedtune coordinator serve` running?)"
    )


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.NOT_FOUND, ExitCode.NOT_FOUND),
        (grpc.StatusCode.INVALID_ARGUMENT, ExitCode.INVALID),
        (grpc.StatusCode.FAILED_PRECONDITION, ExitCode.INVALID),
        (grpc.StatusCode.UNAUTHENTICATED, ExitCode.AUTH),
        (grpc.StatusCode.PERMISSION_DENIED, ExitCode.AUTH),
        (grpc.StatusCode.INTERNAL, ExitCode.ERROR),
    ],
)
def test_maps_grpc_statuses_to_exit_codes(
    fake: FakeAdmin, fake_server: FakeAdminServer, code: grpc.StatusCode, exit_code: int
) -> None:
    fake.fail["GetStatus"] = (code, "details from\nthe server")

    with AdminClient(fake_server.target, None, 5.0) as client, pytest.raises(AdminError) as caught:
        client.get_status()

    assert caught.value.exit_code == exit_code
    assert "details from the server" in caught.value.message and "\n" not in caught.value.message


def test_errors_in_a_stream_become_admin_errors(fake: FakeAdmin, fake_server: FakeAdminServer) -> None:
    fake.fail["WatchEvents"] = (grpc.StatusCode.PERMISSION_DENIED, "permission_denied: not for you")

    with AdminClient(fake_server.target, "t", 5.0) as client, pytest.raises(AdminError) as caught:
        list(client.watch_events(follow=False))

    assert caught.value.exit_code == ExitCode.AUTH and "not for you" in caught.value.message


def test_every_command_has_an_example_in_its_help() -> None:
    import click

    from admin.cli import admin_group

    def walk(command: click.Command, path: list[str]) -> list[list[str]]:
        found = [path]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                found += walk(sub, [*path, name])
        return found

    paths = walk(admin_group, [])
    assert len(paths) >= 20
    for path in paths:
        result = run_admin("127.0.0.1:1", *path, "--help")
        assert result.exit_code == 0 and "Examples:" in result.stdout, path


def test_runs_as_fedtune_admin_from_the_top_level_cli(fake_server: FakeAdminServer) -> None:
    from click.testing import CliRunner

    from fedtune.cli import main

    ok = CliRunner().invoke(main, ["admin", "--coordinator", fake_server.target, "--json", "status"])
    missing = CliRunner().invoke(main, ["admin", "--coordinator", fake_server.target, "rounds", "exp-x"])

    assert ok.exit_code == 0 and json.loads(ok.stdout)["version"] == "0.1.0"
    assert missing.exit_code == 3 and missing.stderr == "Error: not_found: no experiment 'exp-x'\n"
