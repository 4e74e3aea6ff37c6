"""`fedtune db upgrade` and `fedtune db current`, run as a user would (click's CliRunner)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fedtune.cli import main
from storage import db
from storage.cli import resolve_database_url


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("FEDTUNE_DATABASE_URL", raising=False)
    monkeypatch.delenv("FEDTUNE_DATA_DIR", raising=False)
    return CliRunner()


def test_upgrade_then_current_reports_newest(runner: CliRunner, database_url: str) -> None:
    upgraded = runner.invoke(main, ["db", "upgrade", "--database-url", database_url])
    again = runner.invoke(main, ["db", "upgrade", "--database-url", database_url])
    current = runner.invoke(main, ["db", "current", "--check", "--database-url", database_url])

    assert upgraded.exit_code == 0, upgraded.output
    assert "upgraded from an empty database to revision" in upgraded.output
    assert "already at revision" in again.output
    assert current.exit_code == 0 and "(newest)" in current.output
    assert db.current_revision(database_url) == db.head_revision()


def test_current_check_fails_on_an_empty_database(runner: CliRunner, database_url: str) -> None:
    result = runner.invoke(main, ["db", "current", "--check", "--database-url", database_url])

    assert result.exit_code == 1
    assert "no schema yet" in result.output and "fedtune db upgrade" in result.output


def test_upgrade_defaults_to_sqlite_in_the_data_dir(runner: CliRunner, tmp_path: Path) -> None:
    data_dir = tmp_path / "site-data"

    result = runner.invoke(main, ["db", "upgrade", "--data-dir", str(data_dir)])

    assert result.exit_code == 0, result.output
    assert (data_dir / "fedtune.db").is_file()
    assert db.current_revision(db.default_database_url(data_dir)) == db.head_revision()


def test_url_comes_from_flag_then_env_url_then_env_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FEDTUNE_DATABASE_URL", raising=False)
    monkeypatch.setenv("FEDTUNE_DATA_DIR", str(tmp_path / "env-dir"))
    assert resolve_database_url(None, None) == db.default_database_url(tmp_path / "env-dir")
    assert resolve_database_url(None, tmp_path / "flag-dir") == db.default_database_url(tmp_path / "flag-dir")

    monkeypatch.setenv("FEDTUNE_DATABASE_URL", "postgresql+psycopg://env/db")
    assert resolve_database_url(None, tmp_path / "flag-dir") == "postgresql+psycopg://env/db"
    assert resolve_database_url("sqlite:///flag.db", None) == "sqlite:///flag.db"

    monkeypatch.delenv("FEDTUNE_DATA_DIR")
    monkeypatch.delenv("FEDTUNE_DATABASE_URL")
    assert resolve_database_url(None, None) == db.default_database_url(Path("fedtune-data"))


@pytest.mark.parametrize("command", [["db"], ["db", "upgrade"], ["db", "current"]])
def test_help_shows_an_example(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--help"])

    assert result.exit_code == 0
    assert "Examples:" in result.output and "fedtune db" in result.output


def test_unreachable_database_is_a_clear_error_without_password(runner: CliRunner) -> None:
    url = "postgresql+psycopg://fedtune:s3cret@127.0.0.1:1/fedtune?connect_timeout=2"

    result = runner.invoke(main, ["db", "current", "--database-url", url])

    assert result.exit_code == 1
    assert "cannot read the revision" in result.output and "s3cret" not in result.output
