"""Coordinator settings: defaults < YAML config file < FEDTUNE_* environment < explicit overrides.

pydantic-settings is not installed in this environment, so the same precedence is implemented
here in a few lines on a plain pydantic model (``CoordinatorSettings.load``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.identity import SITE_NAME_PATTERN, SITE_NAME_RULE
from fedtune.tensorstream.manifest import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

ENV_PREFIX = "FEDTUNE_"


class CoordinatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)  # 0 = pick a free port
    data_dir: Path = Path("./fedtune-data")
    database_url: str | None = None  # default: sqlite:///<data_dir>/fedtune.db
    # None = no admin token: the Admin API is open on plaintext (logged as a warning); under TLS only an
    # admin certificate (mutual TLS) may call it (decision 27).
    admin_token: str | None = None
    sites: str = ""  # pre-seeded "name:token,name2:token2" (compose installs)
    heartbeat_seconds: float = Field(5.0, gt=0)
    worker_offline_after_seconds: float = Field(30.0, gt=0)
    task_lease_seconds: float = Field(120.0, gt=0)
    max_pull_wait_seconds: float = Field(30.0, ge=0)
    chunk_bytes: int = Field(DEFAULT_CHUNK_BYTES, ge=1024, le=MAX_CHUNK_BYTES)
    max_chunk_bytes: int = Field(MAX_CHUNK_BYTES, ge=1024)
    max_update_bytes: int = Field(8 << 30, ge=1)
    # The most examples one update or result may claim (its FedAvg weight); the registry keeps counts in
    # 64-bit columns, so even a round of many sites at the limit cannot overflow.
    max_update_examples: int = Field(10**9, ge=1, le=10**12)
    # The largest magnitude a tensor value of an update may have, checked chunk by chunk. Weights and
    # deltas sit far below 1e6; the default leaves room for fedncm's per-class feature sums, and keeps
    # value x weight x sites (1e9 x 1e9 x 1e3) far from float32's 3.4e38, so no accumulator overflows.
    max_update_abs_value: float = Field(1e9, gt=0, allow_inf_nan=False)
    scheduler_tick_seconds: float = Field(0.5, gt=0)
    # Secure aggregation (docs/privacy.md): how long each key step (advertise, share, unmask) of a round
    # waits for its sites at most; advertise and share end at the round's deadline at the latest, and the
    # unmask step runs after it (its sites have sent their updates by then).
    secagg_phase_seconds: float = Field(120.0, gt=0)
    # Capacity (docs/decisions.md 28): calls wait on the event loop, not on threads; these bound
    # what one site may hold open and how long a stream may stay silent.
    max_site_pulls: int = Field(4, ge=1)  # concurrent PullTask long-polls per site
    max_site_uploads: int = Field(2, ge=1)  # concurrent PushUpdate streams per site
    max_site_downloads: int = Field(4, ge=1)  # concurrent FetchTensors streams per site
    max_open_uploads: int = Field(256, ge=1)  # PushUpdate streams received at once (more wait their turn)
    stream_idle_seconds: float = Field(60.0, gt=0)  # a stream that sends or reads nothing this long ends
    rpc_threads: int = Field(8, ge=1, le=64)  # threads for database and disk work of Worker calls
    admin_threads: int = Field(4, ge=1, le=64)  # threads for Admin calls (kept apart from the sites')
    # A round whose commit fails on I/O (disk full ...) is retried after this wait, doubling up to the
    # max (coordinator/commit_retry.py, docs/decisions.md 26).
    commit_retry_initial_seconds: float = Field(1.0, gt=0)
    commit_retry_max_seconds: float = Field(60.0, gt=0)
    # Threads that drive and commit rounds off the scheduler thread (a commit of a large model takes
    # seconds); one job per round at a time, so this bounds how many rounds commit at once.
    commit_threads: int = Field(2, ge=1, le=64)
    # Failed authentications allowed per (peer address, claimed site) - or per peer for the admin token -
    # in a sliding window; beyond it calls fail RESOURCE_EXHAUSTED without the token being checked.
    auth_failures_per_window: int = Field(10, ge=1)
    auth_failure_window_seconds: float = Field(60.0, gt=0)
    # Register calls allowed per site in a sliding window, and the worker rows a site keeps.
    registrations_per_window: int = Field(30, ge=1)
    registration_window_seconds: float = Field(60.0, gt=0)
    workers_kept_per_site: int = Field(20, ge=1)
    # Retention and garbage collection (coordinator/retention.py, collector.py; docs/decisions.md 33):
    # keep each experiment's last N versions' tensors (0 = all; stage finals, pinned and in-use versions
    # are always kept); a collection deletes blobs and spool files nothing needs once untouched for the
    # grace period; the scheduler collects every gc_interval_seconds (0 = only `fedtune admin storage gc`).
    retention_keep_last: int = Field(5, ge=0)
    gc_interval_seconds: float = Field(0.0, ge=0)
    gc_grace_seconds: float = Field(600.0, ge=0)
    log_level: str = "INFO"
    log_json: bool = False
    # Prometheus scrape endpoint (docs/decisions.md 32): off unless a port is set (0 = any free port);
    # loopback unless a host is set, since it names the sites and is plain HTTP without authentication.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # TLS (design.md section 7): server TLS when cert and key are set; mutual TLS when client_ca is set.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    @field_validator("tls_cert", "tls_key", "tls_client_ca", "metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_tls(self) -> CoordinatorSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (server TLS) or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self

    @model_validator(mode="after")
    def _check_commit_retry(self) -> CoordinatorSettings:
        if self.commit_retry_max_seconds < self.commit_retry_initial_seconds:
            raise ValueError(
                "commit_retry_max_seconds must be >= commit_retry_initial_seconds "
                f"({self.commit_retry_initial_seconds})"
            )
        return self

    @property
    def tls_mode(self) -> str:
        """'plaintext', 'tls' or 'mtls'."""
        if self.tls_cert is None:
            return "plaintext"
        return "mtls" if self.tls_client_ca is not None else "tls"

    @field_validator("sites")
    @classmethod
    def _check_sites(cls, value: str) -> str:
        for item in filter(None, (s.strip() for s in value.split(","))):
            name, sep, token = item.partition(":")
            if not sep or not name or not token:
                raise ValueError(f"site entry {item!r} must look like name:token")
            if not SITE_NAME_PATTERN.match(name):
                raise ValueError(f"site entry {name!r}: a site name is {SITE_NAME_RULE}")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'fedtune.db'}"

    def seeded_sites(self) -> dict[str, str]:
        pairs = (item.strip().partition(":") for item in self.sites.split(",") if item.strip())
        return {name: token for name, _, token in pairs}

    @classmethod
    def load(
        cls, config_file: Path | None = None, env: dict[str, str] | None = None, **overrides: Any
    ) -> CoordinatorSettings:
        """Merge a YAML file, FEDTUNE_* variables and explicit overrides (None values are skipped)."""
        values: dict[str, Any] = {}
        if config_file is not None:
            try:
                loaded = yaml.safe_load(Path(config_file).read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise FedtuneError(
                    ErrorCode.INVALID_ARGUMENT, f"cannot read config {config_file}: {err}"
                ) from None
            if not isinstance(loaded, dict):
                raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"config {config_file} must be a YAML mapping")
            values.update(loaded)
        environ = os.environ if env is None else env
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in environ:
                values[name] = environ[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"bad coordinator settings: {where}") from None
