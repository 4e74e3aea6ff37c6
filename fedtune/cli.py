"""`fedtune` command line: the composition root, the one kernel module that names the applications.

Each side's commands load lazily, so `fedtune admin` and `fedtune coordinator` never import torch;
only `fedtune worker` and `fedtune bench` do. A command is a plain function that imports its group
when the command is invoked: a static import, so mypy checks it and the layer contract
(`.importlinter`, docs/decisions.md 29) lists each of these reaches by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import click

from fedtune.lifetime import end_with_parent_from_env


def _coordinator() -> click.Command:
    from coordinator.cli import coordinator_group

    return coordinator_group


def _worker() -> click.Command:
    from worker.cli import worker_group

    return worker_group


def _admin() -> click.Command:
    from admin.cli import admin_group

    return admin_group


def _db() -> click.Command:
    from storage.cli import db_group

    return db_group


def _certs() -> click.Command:
    from admin.certs import certs_group

    return certs_group


def _bench() -> click.Command:
    from bench.cli import bench_group

    return bench_group


@dataclass(frozen=True)
class Subcommand:
    load: Callable[[], click.Command]  # imports the command's module only when it is run
    summary: str  # the line `fedtune --help` shows, without importing anything


SUBCOMMANDS: dict[str, Subcommand] = {
    "coordinator": Subcommand(_coordinator, "run the coordinator server"),
    "worker": Subcommand(_worker, "run a site's worker daemon (needs the worker extra: torch)"),
    "admin": Subcommand(_admin, "drive experiments, rounds and models over gRPC"),
    "db": Subcommand(_db, "manage the registry database (migrations)"),
    "certs": Subcommand(_certs, "make a CA and TLS certificates for a coordinator and its sites"),
    "bench": Subcommand(_bench, "quality benchmarks, and held-out reports of any experiment"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        subcommand = SUBCOMMANDS.get(cmd_name)
        return subcommand.load() if subcommand is not None else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name].summary) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedtune")
def main() -> None:
    """fedtune: federated fine-tuning of foundation models across sites that cannot pool data.

    \b
    Try it on one machine:
      fedtune coordinator serve                 # SQLite + ./fedtune-data, port 50051
      fedtune admin sites add hospital-a        # prints the site's token
      fedtune worker run --coordinator 127.0.0.1:50051 --site hospital-a --token ... \\
          --data-root ./data/a --model-root ./models
      fedtune admin experiment submit spec.yaml --start
      fedtune admin watch
    """
    end_with_parent_from_env()  # a no-op unless a parent process (demo, benchmark) asked for it


if __name__ == "__main__":
    main()
