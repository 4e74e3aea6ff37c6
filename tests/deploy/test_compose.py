"""docker/docker-compose.yml checked statically against the code it deploys (no Docker engine).

A renamed CLI option, a settings field that disappears, a missing file or an undefined `${VAR}`
fails here rather than at `docker compose up` on a site's server.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.deploy.helpers import (
    DOCKER_DIR,
    ENV_EXAMPLE,
    Dockerfile,
    container_argv,
    environment_of,
    load_compose,
    parse_dockerfile,
    read_env_file,
    resolve_fedtune_command,
    strings_in,
    variable_refs,
)

ENV_PREFIX = "FEDTUNE_"
COMPOSE = load_compose(read_env_file(ENV_EXAMPLE))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _dockerfile_of(service: dict[str, Any]) -> Dockerfile | None:
    build = service.get("build")
    if build is None:
        return None
    context = DOCKER_DIR / (build if isinstance(build, str) else build.get("context", "."))
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return parse_dockerfile(context / name)


def _settings_class(service: dict[str, Any]) -> type[BaseModel] | None:
    dockerfile = _dockerfile_of(service)
    if dockerfile is None:
        return None
    if dockerfile.path.name == "Dockerfile.coordinator":
        from coordinator.settings import CoordinatorSettings

        return CoordinatorSettings
    if dockerfile.path.name == "Dockerfile.worker":
        from worker.settings import WorkerSettings

        return WorkerSettings
    raise AssertionError(f"no settings class known for {dockerfile.path.name}")


FEDTUNE_SERVICES = sorted(name for name, svc in SERVICES.items() if _dockerfile_of(svc) is not None)
WORKERS = sorted(n for n in FEDTUNE_SERVICES if _dockerfile_of(SERVICES[n]).path.name == "Dockerfile.worker")  # type: ignore[union-attr]


def _fedtune_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in environment_of(service).items() if k.startswith(ENV_PREFIX)}


def test_compose_file_deploys_coordinator_postgres_and_two_gpu_workers() -> None:
    # Assert
    assert {"postgres", "coordinator", "worker-site-a", "worker-site-b"} <= set(SERVICES)
    assert WORKERS == ["worker-site-a", "worker-site-b"]


def test_every_compose_variable_has_a_value_in_env_example() -> None:
    # Prepare
    example = read_env_file(ENV_EXAMPLE)
    refs = [ref for text in strings_in(load_compose()) for ref in variable_refs(text)]

    # Assert
    missing = sorted({r.name for r in refs if not r.has_default and not example.get(r.name)})
    assert not missing, f"${{VAR}}s without a default and without a value in docker/.env.example: {missing}"
    unused = sorted(set(example) - {r.name for r in refs})
    assert not unused, f"docker/.env.example sets variables the compose file never reads: {unused}"


@pytest.mark.parametrize("service_name", FEDTUNE_SERVICES)
def test_service_runs_a_real_fedtune_command_with_existing_options(
    service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the container's environment, so options read from env vars parse as they would there
    service = SERVICES[service_name]
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in environment_of(service).items():
        monkeypatch.setenv(key, value)
    argv = container_argv(service, _dockerfile_of(service))

    # Execute
    path, command = resolve_fedtune_command(argv)

    # Assert
    assert command.callback is not None, f"{service_name}: `{' '.join(path)}` does nothing"


@pytest.mark.parametrize("service_name", FEDTUNE_SERVICES)
def test_fedtune_variables_are_fields_of_the_service_settings(service_name: str) -> None:
    # Prepare
    service = SERVICES[service_name]
    settings_class = _settings_class(service)
    assert settings_class is not None
    fields = {name.lower(): name for name in settings_class.model_fields}

    # Execute
    unknown = sorted(k for k in _fedtune_env(service) if k[len(ENV_PREFIX) :].lower() not in fields)

    # Assert
    assert not unknown, f"{service_name}: no field of {settings_class.__name__} reads {unknown}"


@pytest.mark.parametrize("service_name", FEDTUNE_SERVICES)
def test_settings_accept_the_values_compose_passes(service_name: str) -> None:
    # Prepare
    service = SERVICES[service_name]
    settings_class = _settings_class(service)
    assert settings_class is not None
    fields = {name.lower(): name for name in settings_class.model_fields}
    names = {key: key[len(ENV_PREFIX) :].lower() for key in _fedtune_env(service)}
    values = {fields[names[k]]: v for k, v in _fedtune_env(service).items() if names[k] in fields}

    # Execute / Assert: raises ValidationError on e.g. a malformed FEDTUNE_SITES or FEDTUNE_DEVICE
    settings_class.model_validate(values)


def test_each_worker_is_a_seeded_site_with_its_own_token_and_reaches_the_coordinator() -> None:
    # Prepare
    coordinator_env = _fedtune_env(SERVICES["coordinator"])
    seeded = dict(item.split(":", 1) for item in coordinator_env["FEDTUNE_SITES"].split(","))
    port = coordinator_env.get("FEDTUNE_PORT", "50051")

    # Assert
    sites = []
    for name in WORKERS:
        env = _fedtune_env(SERVICES[name])
        sites.append(env["FEDTUNE_SITE"])
        assert env["FEDTUNE_SITE"] in seeded, f"{name}: site {env['FEDTUNE_SITE']} is not in FEDTUNE_SITES"
        assert env["FEDTUNE_TOKEN"] == seeded[env["FEDTUNE_SITE"]], (
            f"{name}: token differs from the seeded one"
        )
        host, _, worker_port = env["FEDTUNE_COORDINATOR"].rpartition(":")
        assert host in SERVICES and worker_port == port, f"{name}: FEDTUNE_COORDINATOR {host}:{worker_port}"
    assert len(set(sites)) == len(sites), "two workers claim the same site"
    assert len(set(seeded.values())) == len(seeded), "two sites share a token"


def test_each_worker_reserves_an_nvidia_gpu() -> None:
    for name in WORKERS:
        devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), name


def test_each_worker_mounts_its_own_data_and_models() -> None:
    # Prepare
    mounts: dict[str, dict[str, str]] = {}
    for name in WORKERS:
        volumes = [str(v).split(":") for v in SERVICES[name].get("volumes", [])]
        mounts[name] = {parts[1]: parts[0] for parts in volumes}
        env = _fedtune_env(SERVICES[name])

        # Assert: the settings point at the mounted folders
        for key in ("FEDTUNE_DATA_ROOT", "FEDTUNE_MODEL_ROOT", "FEDTUNE_WORK_DIR"):
            assert env.get(key, "") in mounts[name], f"{name}: {key}={env.get(key)} is not a mounted folder"
    sources = [src for m in mounts.values() for src in m.values()]
    assert len(sources) == len(set(sources)), f"workers share a data, model or work mount: {mounts}"


def test_build_contexts_and_dockerfiles_exist() -> None:
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            assert "image" in service, f"{name}: neither build nor image"
            continue
        context = DOCKER_DIR / (build if isinstance(build, str) else build["context"])
        assert context.is_dir(), f"{name}: build context {context} is missing"
        dockerfile = context / (
            build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        )
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


def _bind_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                sources.append(volume["source"])
            continue
        source = str(volume).split(":")[0]
        if source.startswith((".", "/", "~")):
            sources.append(source)
    return sources


def test_bind_mounted_paths_exist_and_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for source in _bind_sources(service):
            path = Path(source).expanduser()
            path = path if path.is_absolute() else DOCKER_DIR / path
            assert path.exists(), f"{name}: bind mount source {source} does not exist"
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0] if not isinstance(volume, dict) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: named volume {source} is not declared under volumes:"


def _has_healthcheck(service: dict[str, Any]) -> bool:
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    dockerfile = _dockerfile_of(service)
    return dockerfile is not None and dockerfile.last("HEALTHCHECK") not in (None, "NONE")


def test_depends_on_names_existing_services_with_a_meaningful_condition() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        items = {d: {} for d in depends} if isinstance(depends, list) else depends
        for target, spec in items.items():
            assert target in SERVICES, f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert _has_healthcheck(SERVICES[target]), (
                    f"{name} waits for {target} to be healthy: no healthcheck"
                )


_PORT = re.compile(
    r"^(?:(?P<ip>[\d.]+|\[[0-9a-fA-F:]+\]):)?"  # optional host address
    r"(?:(?P<host>\d+(?:-\d+)?):)?(?P<container>\d+(?:-\d+)?)(?:/(?:tcp|udp))?$"
)


def test_ports_are_well_formed_and_publish_the_coordinator_grpc_port() -> None:
    published: dict[str, list[int]] = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            match = _PORT.match(str(port))
            assert match, f"{name}: malformed port mapping {port!r}"
            for number in re.findall(r"\d+", (match["host"] or "") + " " + match["container"]):
                assert 0 < int(number) < 65536, f"{name}: port {number} out of range"
            published.setdefault(name, []).append(int(match["container"].split("-")[0]))
    grpc_port = int(_fedtune_env(SERVICES["coordinator"]).get("FEDTUNE_PORT", "50051"))
    assert published.get("coordinator") == [grpc_port]
    dockerfile = _dockerfile_of(SERVICES["coordinator"])
    assert dockerfile is not None and dockerfile.last("EXPOSE") == str(grpc_port)


def _readme_commands() -> list[list[str]]:
    """`fedtune ...` command lines in docker/README.md code blocks (also after `docker compose exec`)."""
    text = (DOCKER_DIR / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if "fedtune" in words and words[0] in ("fedtune", "docker"):
                words = words[words.index("fedtune") :]
                cut = [i for i, w in enumerate(words) if w in ("<", ">", "|", "&&", ";")]
                commands.append(words[: cut[0]] if cut else words)
    return commands


@pytest.mark.parametrize("argv", _readme_commands(), ids=" ".join)
def test_readme_examples_name_real_commands_and_options(argv: list[str]) -> None:
    path, _ = resolve_fedtune_command(argv, resilient=True)
    assert len(path) >= 2
