"""`fedtune db ...`: manage the registry database (Alembic migrations)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url

from storage import db

_URL_HELP = "SQLAlchemy URL of the registry [env FEDTUNE_DATABASE_URL; default: SQLite in --data-dir]"
_DATA_DIR_HELP = "folder of the default SQLite registry [env FEDTUNE_DATA_DIR; default ./fedtune-data]"
F = TypeVar("F", bound=Callable[..., Any])


def resolve_database_url(database_url: str | None, data_dir: Path | None) -> str:
    """The registry URL: --database-url, else env FEDTUNE_DATABASE_URL, else SQLite in the data
    folder (--data-dir, else env FEDTUNE_DATA_DIR, else ./fedtune-data)."""
    if database_url:
        return database_url
    if os.environ.get("FEDTUNE_DATABASE_URL"):
        return os.environ["FEDTUNE_DATABASE_URL"]
    folder = data_dir or Path(os.environ.get("FEDTUNE_DATA_DIR") or "fedtune-data")
    return db.default_database_url(folder)


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _database_options(command: F) -> F:
    data_dir_type = click.Path(file_okay=False, path_type=Path)
    command = click.option("--data-dir", type=data_dir_type, help=_DATA_DIR_HELP)(command)
    return click.option("--database-url", metavar="URL", help=_URL_HELP)(command)


@click.group("db")
def db_group() -> None:
    """Manage the registry database (schema migrations with Alembic).

    \b
    Examples:
      fedtune db upgrade                                   # ./fedtune-data/fedtune.db
      fedtune db upgrade --database-url postgresql+psycopg://fedtune:secret@db:5432/fedtune
      fedtune db current
    """


@db_group.command("upgrade")
@_database_options
@click.option("--revision", default="head", show_default=True, help="migrate up to this revision")
def upgrade_command(database_url: str | None, data_dir: Path | None, revision: str) -> None:
    """Create or migrate the registry schema to the newest revision. Safe to run again.

    \b
    Examples:
      fedtune db upgrade --data-dir ./fedtune-data
      FEDTUNE_DATABASE_URL=postgresql+psycopg://fedtune@db/fedtune fedtune db upgrade
    """
    url = resolve_database_url(database_url, data_dir)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite" and make_url(url).database:
        Path(str(make_url(url).database)).parent.mkdir(parents=True, exist_ok=True)
    before = db.current_revision(url)
    try:
        db.upgrade(url, revision)
    except Exception as err:  # a CLI user wants the reason, not a traceback
        raise click.ClickException(f"upgrade of {_shown(url)} failed: {err}") from err
    after = db.current_revision(url)
    if before == after:
        click.echo(f"{_shown(url)}: already at revision {after}")
    else:
        click.echo(f"{_shown(url)}: upgraded from {before or 'an empty database'} to revision {after}")


@db_group.command("current")
@_database_options
@click.option("--check", is_flag=True, help="exit with status 1 unless the schema is the newest")
def current_command(database_url: str | None, data_dir: Path | None, check: bool) -> None:
    """Show the registry's schema revision and whether it is the newest.

    \b
    Examples:
      fedtune db current --data-dir ./fedtune-data
      fedtune db current --check --database-url postgresql+psycopg://fedtune@db/fedtune
    """
    url = resolve_database_url(database_url, data_dir)
    try:
        current = db.current_revision(url)
    except Exception as err:
        raise click.ClickException(f"cannot read the revision of {_shown(url)}: {err}") from err
    head = db.head_revision()
    if current is None:
        click.echo(f"{_shown(url)}: no schema yet (run `fedtune db upgrade`); newest is {head}")
    elif current == head:
        click.echo(f"{_shown(url)}: revision {current} (newest)")
    else:
        click.echo(f"{_shown(url)}: revision {current}; newest is {head} (run `fedtune db upgrade`)")
    if check and current != head:
        raise SystemExit(1)
