"""docker/Dockerfile.* checked statically: what they install, what they run, what they copy."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.deploy.helpers import (
    DOCKER_DIR,
    REPO_ROOT,
    Dockerfile,
    copy_sources,
    dockerignore_excludes,
    parse_dockerfile,
    read_dockerignore,
    resolve_fedtune_command,
)

COORDINATOR = parse_dockerfile(DOCKER_DIR / "Dockerfile.coordinator")
WORKER = parse_dockerfile(DOCKER_DIR / "Dockerfile.worker")
_PIP_INSTALL = re.compile(r"pip3? install[^&;|]*")


def _pip_installs(dockerfile_runs: list[str]) -> list[str]:
    return [m.group(0) for run in dockerfile_runs for m in _PIP_INSTALL.finditer(run)]


def test_coordinator_image_never_installs_torch_or_the_worker_extra() -> None:
    # Prepare
    installs = _pip_installs(COORDINATOR.runs())

    # Assert
    assert installs, "the coordinator image installs nothing?"
    for command in installs:
        assert "[worker" not in command and ",worker" not in command, f"worker extra in: {command}"
        assert not re.search(r"\b(torch|transformers|peft|accelerate)\b", command), (
            f"training stack in: {command}"
        )


def _arg_defaults(dockerfile: Dockerfile) -> dict[str, str]:
    """`ARG NAME=default` of every stage (quotes removed), as the builder reads them without --build-arg."""
    defaults = {}
    for name, args in dockerfile.all_instructions:
        if name == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            defaults[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return defaults


def test_worker_image_installs_cuda_torch_before_the_project_and_keeps_it() -> None:
    # Prepare
    installs = _pip_installs(WORKER.runs())
    torch_at = next(i for i, c in enumerate(installs) if "torch==${TORCH_VERSION}" in c)
    project_at = next(i for i, c in enumerate(installs) if ".[worker]" in c)
    defaults = _arg_defaults(WORKER)

    # Assert: by default the CUDA index first, then the project constrained to the torch already there
    assert torch_at < project_at
    assert "${TORCH_PIP_ARGS}" in installs[torch_at]
    assert defaults["TORCH_PIP_ARGS"] == "--index-url https://download.pytorch.org/whl/${TORCH_CUDA}"
    assert defaults["TORCH_CUDA"].startswith("cu"), "the default worker image must be a CUDA build"
    assert "--constraint" in installs[project_at] or "-c " in installs[project_at]
    assert any("torch.version.cuda" in run for run in WORKER.runs()), "no build-time check of the CUDA build"
    assert WORKER.all_instructions[0][0] in ("ARG", "FROM")
    assert "cuda" in defaults["BASE_IMAGE"].lower()


@pytest.mark.parametrize(
    ("dockerfile", "default"),
    [(COORDINATOR, "python:3.11-slim"), (WORKER, "nvidia/cuda:")],
    ids=["coordinator", "worker"],
)
def test_base_image_is_a_build_arg_with_a_registry_default(dockerfile: Dockerfile, default: str) -> None:
    # Prepare
    froms = [args.split()[0] for name, args in dockerfile.all_instructions if name == "FROM"]

    # Assert: every stage starts FROM ${BASE_IMAGE} (so a host without a registry can pass its own)
    assert dockerfile.all_instructions[0][0] == "ARG"
    assert _arg_defaults(dockerfile)["BASE_IMAGE"].startswith(default)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms


def test_worker_build_checks_that_a_cpu_build_stays_cpu() -> None:
    # Prepare: the check after `.[worker]` must hold both ways (TORCH_CUDA=cpu for the smoke test)
    check = next(run for run in WORKER.runs() if "torch.version.cuda" in run)

    # Assert
    assert "os.environ['TORCH_CUDA'] != 'cpu'" in check
    assert "(torch.version.cuda is not None) != want_cuda" in check


@pytest.mark.parametrize("dockerfile", [COORDINATOR, WORKER], ids=["coordinator", "worker"])
def test_image_runs_as_an_unprivileged_user(dockerfile) -> None:  # type: ignore[no-untyped-def]
    user = dockerfile.last("USER")
    assert user is not None and user.split(":")[0] not in ("root", "0")


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [(COORDINATOR, ["fedtune", "coordinator", "serve"]), (WORKER, ["fedtune", "worker", "run"])],
    ids=["coordinator", "worker"],
)
def test_image_entrypoint_and_cmd_name_a_real_fedtune_command(dockerfile, expected, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the image's own ENV (as the container sees it), e.g. FEDTUNE_DATA_ROOT=/data
    for name, args in dockerfile.instructions:
        if name == "ENV":
            for key, value in re.findall(r"(FEDTUNE_\w+)=(\S+)", args):
                monkeypatch.setenv(key, value)
    argv = (dockerfile.exec_form("ENTRYPOINT") or []) + (dockerfile.exec_form("CMD") or [])

    # Execute
    path, _ = resolve_fedtune_command(argv)

    # Assert
    assert path == expected


@pytest.mark.parametrize("dockerfile", [COORDINATOR, WORKER], ids=["coordinator", "worker"])
def test_copied_sources_exist_and_are_not_dockerignored(dockerfile) -> None:  # type: ignore[no-untyped-def]
    patterns = read_dockerignore()
    for source in copy_sources(dockerfile):
        path = REPO_ROOT / source
        assert path.exists(), f"{dockerfile.path.name}: COPY {source}: no such file in the build context"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files = [p for p in files if "__pycache__" not in p.parts]
        assert files, f"{dockerfile.path.name}: COPY {source} copies nothing"
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            assert not dockerignore_excludes(relative, patterns), f".dockerignore drops {relative}"


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    patterns = read_dockerignore()
    for relative in (
        "docker/.env",
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "docker/sites/site-a/data/train.jsonl",
        "fedtune/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(relative, patterns), f"{relative} would be sent to the Docker daemon"


def test_coordinator_image_has_a_grpc_health_check_and_a_data_volume() -> None:
    healthcheck = COORDINATOR.last("HEALTHCHECK") or ""
    assert "healthcheck.py" in healthcheck and "50051" in healthcheck
    assert "/var/lib/fedtune" in (COORDINATOR.last("VOLUME") or "")
    assert COORDINATOR.last("EXPOSE") == "50051"


def test_coordinator_image_copies_the_admin_and_certs_commands_it_documents() -> None:
    # Prepare: docker/README.md drives experiments with `docker compose exec coordinator fedtune admin`
    documented = (DOCKER_DIR / "README.md").read_text()

    # Execute
    copied = {source.rstrip("/") for source in copy_sources(COORDINATOR)}

    # Assert: the admin application (with `fedtune certs`) lives in its own top-level package now
    assert "exec coordinator fedtune admin" in documented
    assert {"fedtune", "coordinator", "storage", "admin"} <= copied
    assert not {"bench", "demo"} & copied, "the coordinator image needs no benchmark or demo"
