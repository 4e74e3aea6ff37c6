"""`fedtune admin`: drive experiments, rounds, sites and models on a running coordinator.

Every command is one (or two) Admin RPCs; output is rich tables for people or, with `--json`,
one JSON document on stdout (JSON lines for `watch`). Errors print one line on stderr and exit
with `AdminError.exit_code` (see `admin.client.ExitCode`).
"""

from __future__ import annotations

from pathlib import Path

import click

from admin.cmd_experiments import experiment_group, round_group, rounds_list
from admin.cmd_models import models_group
from admin.cmd_ops import sites_group, status, watch, workers
from admin.cmd_storage import storage_group
from admin.context import AdminContext, AdminGroup
from admin.options import connection_options
from fedtune.errors import FedtuneError
from fedtune.tls import ClientTls


@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.option(
    "--json", "json_output", is_flag=True, help="Machine-readable output on stdout (JSON lines for watch)."
)
@click.pass_context
def admin_group(
    ctx: click.Context,
    target: str,
    admin_token: str | None,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_server_name: str | None,
    json_output: bool,
) -> None:
    """Drive experiments, rounds, sites and models on a running coordinator.

    \b
    Examples:
      fedtune admin status
      fedtune admin sites add hospital-a
      fedtune admin sites revoke hospital-a --reason "token leaked"
      fedtune admin experiment submit spec.yaml --start
      fedtune admin watch
      fedtune admin storage usage
      fedtune admin --json experiment list | jq -r '.experiments[].state'
      fedtune admin --coordinator coord.example.org:50051 --admin-token "$TOKEN" workers
      fedtune admin --tls-ca certs/admin/ca.pem --tls-cert certs/admin/cert.pem \\
          --tls-key certs/admin/key.pem status      # a mutual-TLS coordinator

    \b
    Exit codes: 1 error, 2 usage, 3 not found, 4 coordinator unreachable,
    5 invalid argument or wrong state, 6 not authenticated or not allowed.
    """
    try:
        tls = ClientTls.from_options(tls_ca, tls_cert, tls_key, tls_server_name)
    except FedtuneError as err:
        raise click.UsageError(err.message) from None
    ctx.obj = AdminContext(
        target=target, admin_token=admin_token or None, timeout=timeout, json_output=json_output, tls=tls
    )


for _command in (
    experiment_group,
    round_group,
    rounds_list,
    sites_group,
    workers,
    models_group,
    storage_group,
    watch,
    status,
):
    admin_group.add_command(_command)
