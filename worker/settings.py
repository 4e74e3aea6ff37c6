"""Worker settings: defaults < YAML config file < environment (FEDTUNE_*) < explicit values (CLI flags).

pydantic-settings is not a dependency of this project, so the few sources are merged here by hand;
the result is validated by one pydantic model, and a bad value raises
``FedtuneError(INVALID_ARGUMENT)`` naming the field and where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.manifest import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES
from fedtune.tls import ClientTls

ENV_PREFIX = "FEDTUNE_"
CONFIG_ENV = "FEDTUNE_WORKER_CONFIG"  # a YAML file, when --config is not given


class WorkerSettings(BaseModel):
    """Everything a site's worker daemon needs. Secrets (the token) never appear in logs or repr."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coordinator: str = Field("127.0.0.1:50051", description="HOST:PORT of the coordinator's gRPC endpoint")
    site: str = Field(
        min_length=1, description="this site's name, as registered with `fedtune admin sites add`"
    )
    token: str = Field(min_length=1, repr=False, description="this site's secret token")
    data_root: Path = Field(description="folder with the site's data files (never leaves this machine)")
    model_root: Path = Field(description="folder with base models, one sub-folder per model name")
    work_dir: Path | None = Field(
        None, description="downloads, personalized adapters; default <data_root>/.fedtune"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    pull_wait_seconds: float = Field(20.0, gt=0, le=300)
    heartbeat_seconds: float = Field(10.0, gt=0, description="replaced by the coordinator's Register answer")
    max_backoff_seconds: float = Field(30.0, gt=0)
    chunk_bytes: int = Field(DEFAULT_CHUNK_BYTES, ge=1024, le=MAX_CHUNK_BYTES)
    torch_threads: int | None = Field(None, ge=1)
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="training processes per train task (one per GPU; >1: torchrun + DDP, worker/ranks.py)",
    )
    log_level: str = "INFO"
    tls_ca: Path | None = Field(None, description="CA that signed the coordinator's cert: TLS when set")
    tls_cert: Path | None = Field(None, description="this site's client certificate (mutual TLS)")
    tls_key: Path | None = Field(None, description="its private key")
    tls_server_name: str | None = Field(None, description="name to verify the coordinator's cert for")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics on this port (off when unset; 0: a free one)",
    )
    metrics_host: str = Field("127.0.0.1", description="interface of the metrics endpoint")
    max_lora_rank: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="train LoRA at most at this rank (sites with small GPUs; docs/decisions.md 37)",
    )

    @field_validator("coordinator")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:50051, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> WorkerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (mutual TLS) or neither")
        if self.tls_ca is None and (self.tls_cert is not None or self.tls_server_name):
            raise ValueError("tls_cert/tls_server_name need tls_ca (the CA that signed the coordinator)")
        return self

    @property
    def client_tls(self) -> ClientTls | None:
        """TLS options for the channel; None = plaintext."""
        if self.tls_ca is None:
            return None
        return ClientTls(self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name)

    @property
    def resolved_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.data_root / ".fedtune"

    @property
    def downloads_dir(self) -> Path:
        return self.resolved_work_dir / "downloads"

    @property
    def personalized_dir(self) -> Path:
        return self.resolved_work_dir / "personalized"


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in WorkerSettings.model_fields:
        key = ENV_PREFIX + name.upper()
        if environ.get(key, "") != "":
            values[name] = environ[key]
    return values


def _from_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"cannot read config file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"config file {path} is not valid YAML: {err}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"config file {path} must be a mapping (site: ..., token: ...)"
        )
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(WorkerSettings.model_fields))
    if unknown:
        known = ", ".join(WorkerSettings.model_fields)
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"config file {path}: unknown keys {unknown}; known: {known}"
        )
    return data


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WorkerSettings:
    """Merge defaults, the YAML file, FEDTUNE_* variables and explicit overrides (None = not given)."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(_from_yaml(config_file))
    merged.update(_from_env(env))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return WorkerSettings.model_validate(merged)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            field = ".".join(str(p) for p in item["loc"]) or "(settings)"
            hint = f" (flag --{field.replace('_', '-')} or env {ENV_PREFIX}{field.upper()})"
            problems.append(f"{field}: {item['msg']}{hint}")
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "; ".join(problems)) from None
