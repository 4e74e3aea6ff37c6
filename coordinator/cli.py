"""`fedtune coordinator ...`: run the coordinator server. Never imports torch."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from fedtune.errors import FedtuneError

_TRANSPORT = {
    "plaintext": "PLAINTEXT, no TLS",
    "tls": "TLS, no client certificates",
    "mtls": "mutual TLS",
}


@click.group("coordinator")
def coordinator_group() -> None:
    """Run the coordinator (the server every worker and admin talks to)."""


@coordinator_group.command("serve")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file with settings (keys as below, e.g. port: 50051).",
)
@click.option("--host", help="Interface to listen on (default 0.0.0.0).")
@click.option("--port", type=int, help="Port to listen on (default 50051; 0 picks a free one).")
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Blobs, spool, SQLite file."
)
@click.option("--database-url", help="SQLAlchemy URL (default sqlite:///<data-dir>/fedtune.db).")
@click.option("--admin-token", help="Bearer token the Admin API requires (default: open, with a warning).")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Server certificate (PEM); with --tls-key the coordinator serves TLS [env FEDTUNE_TLS_CERT].",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Its private key [env FEDTUNE_TLS_KEY].",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA of client certs: mutual TLS, a worker cert CN must be its site [env FEDTUNE_TLS_CLIENT_CA].",
)
@click.option(
    "--metrics-port",
    type=int,
    help="Serve Prometheus metrics on this port (default off; 0: a free one) [env FEDTUNE_METRICS_PORT].",
)
@click.option(
    "--metrics-host", help="Interface of the metrics endpoint (default 127.0.0.1) [env FEDTUNE_METRICS_HOST]."
)
@click.option("--log-level", help="DEBUG, INFO, WARNING ...")
@click.option("--log-json/--no-log-json", default=None, help="One JSON object per log line.")
def serve(
    config_file: Path | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    database_url: str | None,
    admin_token: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    metrics_port: int | None,
    metrics_host: str | None,
    log_level: str | None,
    log_json: bool | None,
) -> None:
    """Serve the Worker and Admin APIs until SIGTERM / Ctrl-C.

    Settings come from (lowest first) defaults, --config FILE, FEDTUNE_* environment variables
    (FEDTUNE_PORT, FEDTUNE_ADMIN_TOKEN, FEDTUNE_SITES="a:tok,b:tok" ...) and these options.

    \b
    Example:
      fedtune coordinator serve --data-dir ./fedtune-data --port 50051 --admin-token s3cret
      FEDTUNE_DATABASE_URL=postgresql+psycopg://fedtune@db/fedtune fedtune coordinator serve
      fedtune coordinator serve --tls-cert certs/coordinator/cert.pem --tls-key certs/coordinator/key.pem \\
          --tls-client-ca certs/coordinator/ca.pem      # mutual TLS (files from `fedtune certs init`)
    """
    from coordinator.logs import configure_logging
    from coordinator.server import start_server
    from coordinator.settings import CoordinatorSettings
    from fedtune.malloc import coordinator_mmap_threshold, return_freed_memory

    try:
        settings = CoordinatorSettings.load(
            config_file,
            host=host,
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            admin_token=admin_token,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            log_level=log_level,
            log_json=log_json,
        )
        configure_logging(settings.log_level, settings.log_json)
        # Stream chunks and fold windows are large and short-lived: keep glibc from growing its mmap
        # threshold to 32 MiB and holding a round's peak resident, without making every 4 MiB chunk a
        # fresh mmap (fedtune/malloc.py; docs/decisions.md 41 and 43).
        return_freed_memory(coordinator_mmap_threshold(settings.chunk_bytes))
        server = start_server(settings)
    except FedtuneError as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)

    stopping = threading.Event()

    def _shutdown(signum: int, _frame: FrameType | None) -> None:
        # Only flag it: stopping inside the handler could re-enter stop() when a second signal comes.
        click.echo(f"received {signal.Signals(signum).name}; shutting down", err=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C kills at once
        stopping.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    click.echo(
        f"fedtune coordinator listening on {settings.host}:{server.port} "
        f"({_TRANSPORT[settings.tls_mode]}; data dir {settings.data_dir})"
    )
    while not stopping.wait(timeout=1.0) and not server.wait(timeout=0):
        pass
    server.stop(grace=10.0)
