"""`fedtune worker ...`: run a site's worker daemon, or show what it would use."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from fedtune.errors import FedtuneError
from worker.settings import WorkerSettings, load_settings

RUN_EXAMPLE = """
\b
Example:
  fedtune worker run --coordinator 10.0.0.5:50051 --site hospital-a --token "$TOKEN" \\
      --data-root /srv/fedtune/data --model-root /srv/fedtune/models \\
      --tls-ca certs/ca.pem --tls-cert certs/cert.pem --tls-key certs/key.pem

\b
Every option can also come from the environment (FEDTUNE_COORDINATOR, FEDTUNE_SITE,
FEDTUNE_TOKEN, FEDTUNE_DATA_ROOT, FEDTUNE_MODEL_ROOT, FEDTUNE_DEVICE, FEDTUNE_TORCH_THREADS, ...)
or from a YAML file given with --config (keys: coordinator, site, token, data_root, model_root,
work_dir, device, processes, pull_wait_seconds, max_backoff_seconds, chunk_bytes, torch_threads, tls_ca,
tls_cert, tls_key, tls_server_name, max_lora_rank).
Precedence: flags > environment > config file > defaults.
"""


def _common_options(fn: Any) -> Any:
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="YAML file with worker settings.",
        ),
        click.option("--coordinator", default=None, help="Coordinator HOST:PORT [env FEDTUNE_COORDINATOR]."),
        click.option("--site", default=None, help="This site's name [env FEDTUNE_SITE]."),
        click.option("--token", default=None, help="This site's secret token [env FEDTUNE_TOKEN]."),
        click.option(
            "--data-root",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Folder with the site's data files [env FEDTUNE_DATA_ROOT].",
        ),
        click.option(
            "--model-root",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Folder with base models, one sub-folder each [env FEDTUNE_MODEL_ROOT].",
        ),
        click.option(
            "--work-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Downloads and personalized models [default <data-root>/.fedtune].",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default=None,
            help="Where to train [env FEDTUNE_DEVICE, default auto].",
        ),
        click.option(
            "--processes",
            type=click.IntRange(1, 64),
            default=None,
            help="Train tasks on N processes, one per GPU (torchrun + DDP); 1 trains in the daemon "
            "itself [env FEDTUNE_PROCESSES, default 1].",
        ),
        click.option("--log-level", default=None, help="DEBUG, INFO, WARNING [env FEDTUNE_LOG_LEVEL]."),
        click.option(
            "--tls-ca",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="CA that signed the coordinator's cert; connects over TLS [env FEDTUNE_TLS_CA].",
        ),
        click.option(
            "--tls-cert",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="This site's client cert, CN = the site (mutual TLS) [env FEDTUNE_TLS_CERT].",
        ),
        click.option(
            "--tls-key",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Its private key [env FEDTUNE_TLS_KEY].",
        ),
        click.option(
            "--tls-server-name",
            default=None,
            help="Name to verify the coordinator's cert for [env FEDTUNE_TLS_SERVER_NAME].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings(config_file: Path | None, **flags: Any) -> WorkerSettings:
    try:
        return load_settings(config_file, flags)
    except FedtuneError as err:
        raise click.UsageError(err.message) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group("worker")
def worker_group() -> None:
    """Run a site's worker daemon: it dials the coordinator, pulls tasks and trains on local data."""


@worker_group.command("run", epilog=RUN_EXAMPLE)
@_common_options
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (default off; 0: a free one) [env FEDTUNE_METRICS_PORT].",
)
@click.option(
    "--metrics-host",
    default=None,
    help="Interface of the metrics endpoint (default 127.0.0.1) [env FEDTUNE_METRICS_HOST].",
)
@click.option(
    "--max-lora-rank",
    type=click.IntRange(1, 1024),
    default=None,
    help="Train LoRA at most at this rank (a small GPU); the experiment needs strategy hetero_lora "
    "(docs/decisions.md 37) [env FEDTUNE_MAX_LORA_RANK].",
)
def run_command(config_file: Path | None, **flags: Any) -> None:
    """Run the worker until SIGTERM / Ctrl-C (exit 0); data never leaves this machine."""
    from worker.daemon import WorkerDaemon

    settings = _settings(config_file, **flags)
    _setup_logging(settings.log_level)
    stop_event = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("fedtune.worker").info("signal %d: stopping", signum)
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        code = WorkerDaemon(settings).run(stop_event)
    except FedtuneError as err:
        click.echo(f"error: {err}", err=True)
        code = 2
    sys.exit(code)


@worker_group.command("info", epilog=RUN_EXAMPLE)
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_command(config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Print the device the worker would train on and the sizes of the local datasets."""
    from worker.device import select_device
    from worker.tasks import dataset_sizes

    # site/token are not needed to look around: fill placeholders when absent.
    merged = {"site": "-", "token": "-", **{k: v for k, v in flags.items() if v is not None}}
    settings = _settings(config_file, **merged)
    try:
        device = select_device(settings.device).info
        sizes = dataset_sizes(settings.data_root)
    except FedtuneError as err:
        raise click.ClickException(str(err)) from None
    report = {"device": device, "data_root": str(settings.data_root), "dataset_sizes": sizes}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"device:    {device.get('kind')} {device.get('name', '')}".rstrip())
    click.echo(f"memory:    {int(device.get('memory_bytes', 0)) / 2**30:.1f} GiB, bf16={device.get('bf16')}")
    click.echo(f"data root: {settings.data_root}")
    for name, count in sorted(sizes.items()):
        click.echo(f"  {name}: {count} examples")
    if not sizes:
        click.echo("  (no data files found)")
