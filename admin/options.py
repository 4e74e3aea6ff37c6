"""The options that say how to reach a coordinator's Admin API, shared by every command that does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
F = TypeVar("F", bound=Callable[..., object])

# each adds one keyword argument: target, admin_token, timeout, tls_ca, tls_cert, tls_key, tls_server_name
_OPTIONS = [
    click.option(
        "--coordinator",
        "target",
        envvar="FEDTUNE_COORDINATOR",
        default=DEFAULT_COORDINATOR,
        show_default=True,
        metavar="HOST:PORT",
        help="The coordinator's gRPC address [env FEDTUNE_COORDINATOR].",
    ),
    click.option(
        "--admin-token",
        envvar="FEDTUNE_ADMIN_TOKEN",
        default=None,
        metavar="TOKEN",
        help="Admin credential, sent as `authorization: Bearer TOKEN` [env FEDTUNE_ADMIN_TOKEN].",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        envvar="FEDTUNE_TIMEOUT",
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        metavar="SECONDS",
        help="Deadline of each call [env FEDTUNE_TIMEOUT]; the streams of `watch` and `models export` "
        "have none.",
    ),
    click.option(
        "--tls-ca",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="FEDTUNE_TLS_CA",
        default=None,
        metavar="FILE",
        help="CA that signed the coordinator's cert: connect over TLS [env FEDTUNE_TLS_CA].",
    ),
    click.option(
        "--tls-cert",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="FEDTUNE_TLS_CERT",
        default=None,
        metavar="FILE",
        help="Client certificate for a mutual-TLS coordinator, e.g. certs/admin/cert.pem "
        "[env FEDTUNE_TLS_CERT].",
    ),
    click.option(
        "--tls-key",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="FEDTUNE_TLS_KEY",
        default=None,
        metavar="FILE",
        help="Its private key [env FEDTUNE_TLS_KEY].",
    ),
    click.option(
        "--tls-server-name",
        envvar="FEDTUNE_TLS_SERVER_NAME",
        default=None,
        metavar="NAME",
        help="Verify the coordinator's cert for NAME instead of the dialled host "
        "[env FEDTUNE_TLS_SERVER_NAME].",
    ),
]


def connection_options(command: F) -> F:
    """Add --coordinator, --admin-token, --timeout and the --tls-* options (each with its env variable)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command
