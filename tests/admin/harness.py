"""Run `fedtune admin` in-process as a user would, and read back its exit code, stdout, stderr, JSON.

Reusable by end-to-end tests against the real coordinator::

    result = run_admin(f"127.0.0.1:{server.port}", "--json", "experiment", "list")
    assert result.exit_code == 0, result.stderr
    assert result.json["experiments"] == []
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner

from admin.cli import admin_group


@dataclass(frozen=True)
class AdminRun:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def json(self) -> Any:
        """stdout parsed as one JSON document."""
        return json.loads(self.stdout)

    @property
    def json_lines(self) -> list[Any]:
        """stdout parsed as JSON lines (`watch --json`)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_admin(
    target: str | None,
    *args: str,
    token: str | None = None,
    timeout: float = 5.0,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> AdminRun:
    """`fedtune admin --coordinator TARGET [--admin-token TOKEN] --timeout T ARGS...`, in-process.

    `target=None` leaves `--coordinator` out (the environment or the default applies).
    """
    argv = ["--timeout", str(timeout)]
    if target is not None:
        argv += ["--coordinator", target]
    if token is not None:
        argv += ["--admin-token", token]
    # An empty environment for our variables, so a developer's shell settings never leak into tests.
    base_env = {
        "FEDTUNE_COORDINATOR": None,
        "FEDTUNE_ADMIN_TOKEN": None,
        "FEDTUNE_TIMEOUT": None,
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(admin_group, [*argv, *args], env={**base_env, **(env or {})}, input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"fedtune admin {' '.join(args)} crashed") from result.exception
    return AdminRun(result.exit_code, result.stdout, result.stderr, result.exception)
