"""`fedtune` command line. Each side's commands load lazily, so `fedtune admin` and
`fedtune coordinator` never import torch; only `fedtune worker` does."""

from __future__ import annotations

import importlib

import click

from fedtune.lifetime import end_with_parent_from_env

# command name -> "module:attribute" of a click command or group
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "coordinator": ("coordinator.cli:coordinator_group", "run the coordinator server"),
    "worker": ("worker.cli:worker_group", "run a site's worker daemon (needs the worker extra: torch)"),
    "admin": ("fedtune.admin.cli:admin_group", "drive experiments, rounds and models over gRPC"),
    "db": ("storage.cli:db_group", "manage the registry database (migrations)"),
    "certs": ("fedtune.certs:certs_group", "make a CA and TLS certificates for a coordinator and its sites"),
    "bench": ("fedtune.bench.cli:bench_group", "quality benchmarks, and held-out reports of any experiment"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _SUBCOMMANDS:
            return None
        target, _ = _SUBCOMMANDS[cmd_name]
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
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
