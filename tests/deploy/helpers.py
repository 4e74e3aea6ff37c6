"""Static models of the deployment files: compose interpolation, Dockerfile instructions,
.dockerignore matching and resolution of a container's argv to a `fedtune` click command.

Only what docker/ uses is modelled; no Docker engine is needed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME; `$$` is a literal `$`.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


@dataclass(frozen=True)
class VariableRef:
    name: str
    op: str | None  # None, ":-", "-", ":?", "?"

    @property
    def has_default(self) -> bool:
        return self.op in (":-", "-")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: line {line!r} is not KEY=VALUE"
        values[key.strip()] = value.strip().strip("'\"")
    return values


def variable_refs(text: str) -> list[VariableRef]:
    return [
        VariableRef(m["braced"] or m["bare"], m["op"]) for m in _VARIABLE.finditer(text) if not m["escaped"]
    ]


def strings_in(node: Any) -> list[str]:
    """Every string value (and key) of a parsed YAML tree: where compose interpolates (not comments)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [text for item in node for text in strings_in(item)]
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in strings_in(key) + strings_in(value)]
    return []


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string; a missing `:?`/`?` variable raises KeyError."""

    def replace(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["braced"] or m["bare"], m["op"], m["arg"] or ""
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is None:
            if op in (":?", "?"):
                raise KeyError(f"{name} is required: {arg}")
            return arg if op in (":-", "-") else ""
        return value

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose sees it: YAML (anchors and `<<` merged), then `${VAR}` filled in."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(raw, dict) and isinstance(raw.get("services"), dict), "compose file has no services:"
    tree: dict[str, Any] = raw if env is None else interpolate_tree(raw, env)
    return tree


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment:` (mapping or KEY=VALUE list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# ---- Dockerfiles -------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    path: Path
    # (instruction, arguments) of the final stage, continuation lines joined, comments dropped
    instructions: list[tuple[str, str]] = field(default_factory=list)
    all_instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        found = [args for name, args in self.instructions if name == instruction]
        return found[-1] if found else None

    def exec_form(self, instruction: str) -> list[str] | None:
        """ENTRYPOINT/CMD in JSON (exec) form; shell form is rejected (no signal forwarding)."""
        args = self.last(instruction)
        if args is None:
            return None
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{instruction} {args}"
        return value

    def runs(self) -> list[str]:
        return [args for name, args in self.all_instructions if name == "RUN"]


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    parsed = Dockerfile(path)
    for line in logical:
        name, _, args = line.partition(" ")
        entry = (name.upper(), args.strip())
        parsed.all_instructions.append(entry)
        if entry[0] == "FROM":
            parsed.instructions = []
        parsed.instructions.append(entry)
    return parsed


def copy_sources(dockerfile: Dockerfile) -> list[str]:
    """Sources of COPY/ADD instructions that read the build context (not `--from=` another stage)."""
    sources: list[str] = []
    for name, args in dockerfile.all_instructions:
        if name not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(args)]
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


# ---- .dockerignore -----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(relative_path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = relative_path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negated else pattern)
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def read_dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# ---- the fedtune CLI ---------------------------------------------------------------------------


def _option_names(command: click.Command, ctx: click.Context) -> set[str]:
    names: set[str] = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names


def _check_options(command: click.Command, ctx: click.Context, tokens: list[str], path: list[str]) -> None:
    known = _option_names(command, ctx)
    for token in tokens:
        if token == "--":
            break
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            assert name in known, f"`{' '.join(path)}` has no option {name}; it has {sorted(known)}"


def resolve_fedtune_command(argv: list[str], resilient: bool = False) -> tuple[list[str], click.Command]:
    """Walk `fedtune ...` through the real click groups and parse every level's arguments for real
    (unknown commands, unknown options and bad values all fail). Returns the command path and leaf.
    `resilient` skips value checks (for documentation examples with placeholders); unknown commands
    and options still fail."""
    from fedtune.cli import main

    assert argv and argv[0] == "fedtune", f"the container does not run the fedtune CLI: {argv}"
    command: click.Command = main
    args, path = list(argv[1:]), ["fedtune"]
    parent: click.Context | None = None
    while True:
        ctx = command.make_context(path[-1], list(args), parent=parent, resilient_parsing=resilient)
        if not isinstance(command, click.Group):
            _check_options(command, ctx, args, path)
            return path, command
        remaining = [*ctx._protected_args, *ctx.args]
        _check_options(command, ctx, args[: len(args) - len(remaining)], path)
        assert remaining, f"`{' '.join(path)}` is a group: the container must name one of its commands"
        name, sub, rest = command.resolve_command(ctx, remaining)
        assert name is not None and sub is not None, f"`{' '.join(path)}` has no command {remaining[0]!r}"
        command, args, parent = sub, rest, ctx
        path.append(name)


def container_argv(service: Mapping[str, Any], dockerfile: Dockerfile | None) -> list[str]:
    """What the container runs: compose entrypoint/command over the image's ENTRYPOINT/CMD
    (setting `entrypoint:` in compose drops the image's CMD, as Docker does)."""

    def as_list(value: Any) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]

    image_entrypoint = (dockerfile.exec_form("ENTRYPOINT") if dockerfile else None) or []
    image_cmd = (dockerfile.exec_form("CMD") if dockerfile else None) or []
    if "entrypoint" in service:
        entrypoint = as_list(service["entrypoint"])
        command = as_list(service["command"]) if "command" in service else []
    else:
        entrypoint = image_entrypoint
        command = as_list(service["command"]) if "command" in service else image_cmd
    return entrypoint + command
