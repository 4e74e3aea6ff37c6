"""`make compose-smoke` (docker/smoke.sh) checked statically: it must start the real compose file.

The smoke test itself needs a Docker engine and minutes; these checks pin what it relies on, so a
change to docker-compose.yml, the Dockerfiles or the spec format that would break it fails here.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from fedtune.spec import parse_spec
from tests.deploy.helpers import DOCKER_DIR, REPO_ROOT, environment_of, load_compose, parse_dockerfile

SMOKE = DOCKER_DIR / "smoke.sh"
SMOKE_DIR = DOCKER_DIR / "smoke"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"smoke_{name}", SMOKE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_commands() -> list[list[str]]:
    """The `build NAME IMAGE ARGS...` calls of smoke.sh, continuation lines joined and split as bash would."""
    text = re.sub(r"\\\n\s*", " ", SMOKE.read_text())
    return [shlex.split(line.strip())[1:] for line in text.splitlines() if line.strip().startswith("build ")]


def _dockerfile_and_args(words: list[str]) -> tuple[Path, dict[str, str]]:
    args, dockerfile = {}, None
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "--build-arg":
            key, _, val = value.partition("=")
            args[key] = val
        if flag == "-f":
            dockerfile = Path(value.replace('"', "").replace("$HERE", str(DOCKER_DIR)))
    assert dockerfile is not None, words
    return dockerfile, args


def test_smoke_builds_postgres_coordinator_and_a_cpu_worker_from_the_repository_dockerfiles() -> None:
    # Prepare
    builds = {words[0]: _dockerfile_and_args(words) for words in _build_commands()}

    # Assert
    assert set(builds) == {"postgres", "coordinator", "worker"}
    assert builds["coordinator"][0] == DOCKER_DIR / "Dockerfile.coordinator"
    assert builds["worker"][0] == DOCKER_DIR / "Dockerfile.worker"
    worker_args = builds["worker"][1]
    assert worker_args["TORCH_CUDA"] == "cpu"
    assert worker_args["TORCH_VERSION"].endswith("+cpu"), "only the CPU wheel: never a multi-GB CUDA build"


def test_every_build_arg_the_smoke_passes_is_declared_by_its_dockerfile() -> None:
    for words in _build_commands():
        # Prepare
        path, args = _dockerfile_and_args(words)
        declared = {
            a.partition("=")[0].strip() for n, a in parse_dockerfile(path).all_instructions if n == "ARG"
        }

        # Assert: an undeclared --build-arg is silently ignored by docker build
        assert set(args) <= declared, f"{path.name}: --build-arg {sorted(set(args) - declared)} not declared"


def test_derived_compose_file_keeps_every_service_command_environment_and_volume() -> None:
    # Prepare
    compose_smoke = _module("compose_smoke")
    original = yaml.safe_load((DOCKER_DIR / "docker-compose.yml").read_text())

    # Execute
    derived = compose_smoke.derive(yaml.safe_load((DOCKER_DIR / "docker-compose.yml").read_text()), "pg:1")

    # Assert
    assert "name" not in derived and derived["volumes"] == original["volumes"]
    assert set(derived["services"]) == set(original["services"])
    for name, service in original["services"].items():
        smoke: dict[str, Any] = derived["services"][name]
        assert "build" not in smoke and "deploy" not in smoke
        for key in ("command", "volumes", "depends_on", "healthcheck", "image"):
            if name != "postgres" or key != "image":
                assert smoke.get(key) == service.get(key), f"{name}: {key} differs"
        expected_env = environment_of(service)
        if "deploy" in service:
            expected_env["FEDTUNE_DEVICE"] = "cpu"
        assert environment_of(smoke) == expected_env, name
    assert derived["services"]["postgres"]["image"] == "pg:1"
    assert "ports" not in derived["services"]["coordinator"]


def test_smoke_postgres_image_honours_what_compose_asks_of_postgres() -> None:
    # Prepare
    postgres = load_compose()["services"]["postgres"]
    entrypoint = (SMOKE_DIR / "postgres-entrypoint.sh").read_text()
    dockerfile = parse_dockerfile(SMOKE_DIR / "Dockerfile.postgres")
    mount = next(v.split(":")[1] for v in postgres["volumes"])

    # Assert: the variables it sets are read, its volume is the data folder, its health check exists
    for variable in environment_of(postgres):
        assert f"${{{variable}" in entrypoint, f"postgres-entrypoint.sh ignores {variable}"
    assert mount in (dockerfile.last("VOLUME") or "")
    assert f"PGDATA={mount}" in " ".join(a for n, a in dockerfile.all_instructions if n == "ENV")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "/usr/lib/postgresql/15/bin" in " ".join(a for n, a in dockerfile.all_instructions if n == "ENV")
    assert (dockerfile.last("USER") or "root") not in ("root", "0")


def test_smoke_experiment_uses_the_fixture_model_and_data_and_runs_one_round_on_both_sites() -> None:
    # Prepare
    make_fixture = _module("make_fixture")
    spec = parse_spec(yaml.safe_load((SMOKE_DIR / "experiment.yaml").read_text()))

    # Assert
    assert spec.base_model.name == make_fixture.MODEL_NAME
    assert list(spec.labels or []) == make_fixture.LABELS
    assert spec.data.train == "train.jsonl" and spec.data.eval == "eval.jsonl"
    assert [stage.rounds for stage in spec.stages] == [1]
    assert spec.stages[0].selection.min_sites == 2


def test_smoke_is_outside_make_test_and_bounded_in_time() -> None:
    # Prepare
    makefile = (REPO_ROOT / "Makefile").read_text()
    script = SMOKE.read_text()
    test_recipe = re.search(r"^test:.*?\n((?:\t.*\n)+)", makefile, flags=re.M)

    # Assert
    assert re.search(r"^compose-smoke:.*\n\tdocker/smoke\.sh", makefile, flags=re.M)
    assert test_recipe is not None and "smoke" not in test_recipe.group(0)
    assert "trap teardown EXIT" in script and "down -v --remove-orphans" in script
    assert re.search(r"SMOKE_TIMEOUT=\$\{SMOKE_TIMEOUT:-\d+\}", script)
    assert re.search(r"SMOKE_BUILD_TIMEOUT=\$\{SMOKE_BUILD_TIMEOUT:-\d+\}", script)
