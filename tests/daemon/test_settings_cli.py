"""Worker settings precedence and the `fedtune worker` command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fedtune.cli import main
from fedtune.errors import FedtuneError
from worker.settings import load_settings

BASE = {
    "FEDTUNE_SITE": "env-site",
    "FEDTUNE_TOKEN": "env-token",
    "FEDTUNE_DATA_ROOT": "/d",
    "FEDTUNE_MODEL_ROOT": "/m",
}


def test_flags_beat_environment_which_beats_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("site: file-site\ncoordinator: file:1\npull-wait-seconds: 5\nchunk_bytes: 4096\n")
    settings = load_settings(
        config, {"site": "flag-site", "coordinator": None}, environ={**BASE, "FEDTUNE_CHUNK_BYTES": "8192"}
    )
    assert settings.site == "flag-site"
    assert settings.coordinator == "file:1"
    assert settings.chunk_bytes == 8192
    assert settings.pull_wait_seconds == 5.0
    assert settings.token == "env-token"


def test_work_dir_defaults_under_the_data_root() -> None:
    settings = load_settings(None, {}, environ=BASE)
    assert settings.resolved_work_dir == Path("/d/.fedtune")
    assert settings.downloads_dir == Path("/d/.fedtune/downloads")
    assert "env-token" not in repr(settings)


def test_missing_and_bad_values_name_the_flag_and_variable() -> None:
    with pytest.raises(FedtuneError) as err:
        load_settings(
            None, {"coordinator": "no-port"}, environ={"FEDTUNE_DATA_ROOT": "/d", "FEDTUNE_MODEL_ROOT": "/m"}
        )
    message = err.value.message
    assert "site: Field required (flag --site or env FEDTUNE_SITE)" in message
    assert "coordinator: Value error, expected HOST:PORT" in message


def test_max_lora_rank_comes_from_the_flag_or_environment_and_is_at_least_1() -> None:
    assert load_settings(None, {}, environ=BASE).max_lora_rank is None
    assert load_settings(None, {}, environ={**BASE, "FEDTUNE_MAX_LORA_RANK": "4"}).max_lora_rank == 4
    assert load_settings(None, {"max_lora_rank": 2}, environ=BASE).max_lora_rank == 2
    with pytest.raises(
        FedtuneError, match="max_lora_rank: .*flag --max-lora-rank or env FEDTUNE_MAX_LORA_RANK"
    ):
        load_settings(None, {"max_lora_rank": 0}, environ=BASE)


def test_unknown_config_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("sitee: x\n")
    with pytest.raises(FedtuneError, match="unknown keys \\['sitee'\\]"):
        load_settings(config, {}, environ=BASE)


def test_run_help_shows_an_example() -> None:
    result = CliRunner().invoke(main, ["worker", "run", "--help"])
    assert result.exit_code == 0
    assert "fedtune worker run --coordinator" in result.output
    assert "FEDTUNE_TOKEN" in result.output


def test_run_without_a_site_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["worker", "run", "--data-root", str(tmp_path), "--model-root", str(tmp_path)],
        env={"FEDTUNE_SITE": "", "FEDTUNE_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "site: Field required" in result.output


def test_processes_default_to_one_and_come_from_flag_or_environment() -> None:
    assert load_settings(None, {}, environ=BASE).processes == 1
    assert load_settings(None, {}, environ={**BASE, "FEDTUNE_PROCESSES": "4"}).processes == 4
    assert load_settings(None, {"processes": 2}, environ={**BASE, "FEDTUNE_PROCESSES": "4"}).processes == 2
    with pytest.raises(FedtuneError, match="processes: .*flag --processes or env FEDTUNE_PROCESSES"):
        load_settings(None, {}, environ={**BASE, "FEDTUNE_PROCESSES": "0"})
    assert "--processes" in CliRunner().invoke(main, ["worker", "run", "--help"]).output
