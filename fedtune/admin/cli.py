"""`fedtune admin`: drive experiments, rounds, sites and models on a running coordinator.

Every command is one (or two) Admin RPCs; output is rich tables for people or, with `--json`,
one JSON document on stdout (JSON lines for `watch`). Errors print one line on stderr and exit
with `AdminError.exit_code` (see `fedtune.admin.client.ExitCode`).
"""

from __future__ import annotations

from pathlib import Path

import click

from fedtune.admin.cmd_experiments import experiment_group, round_group, rounds_list
from fedtune.admin.cmd_models import models_group
from fedtune.admin.cmd_ops import sites_group, status, watch, workers
from fedtune.admin.context import AdminContext, AdminGroup
from fedtune.errors import FedtuneError
from fedtune.tls import ClientTls

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0


@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--coordinator",
    "target",
    envvar="FEDTUNE_COORDINATOR",
    default=DEFAULT_COORDINATOR,
    show_default=True,
    metavar="HOST:PORT",
    help="The coordinator's gRPC address [env FEDTUNE_COORDINATOR].",
)
@click.option(
    "--admin-token",
    envvar="FEDTUNE_ADMIN_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Admin credential, sent as `authorization: Bearer TOKEN` [env FEDTUNE_ADMIN_TOKEN].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    envvar="FEDTUNE_TIMEOUT",
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Deadline of each call [env FEDTUNE_TIMEOUT]; the streams of `watch` and `models export` have none.",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FEDTUNE_TLS_CA",
    default=None,
    metavar="FILE",
    help="CA that signed the coordinator's cert: connect over TLS [env FEDTUNE_TLS_CA].",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FEDTUNE_TLS_CERT",
    default=None,
    metavar="FILE",
    help="Client certificate for a mutual-TLS coordinator, e.g. certs/admin/cert.pem [env FEDTUNE_TLS_CERT].",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FEDTUNE_TLS_KEY",
    default=None,
    metavar="FILE",
    help="Its private key [env FEDTUNE_TLS_KEY].",
)
@click.option(
    "--tls-server-name",
    envvar="FEDTUNE_TLS_SERVER_NAME",
    default=None,
    metavar="NAME",
    help="Verify the coordinator's cert for NAME instead of the dialled host [env FEDTUNE_TLS_SERVER_NAME].",
)
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
      fedtune admin experiment submit spec.yaml --start
      fedtune admin watch
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
    watch,
    status,
):
    admin_group.add_command(_command)
