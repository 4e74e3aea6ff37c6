"""SQLAlchemy 2.0 ORM models: the registry's tables.

Times are unix seconds (float) so SQLite and PostgreSQL behave the same; JSON columns hold
small documents (metrics, manifests, lists of sites). Large data never lives here: tensors are
blobs, named by their sha256 digest. A row that names a blob is committed only after the blob
is durable (storage.blobs).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# Every constraint gets a deterministic name, the same on SQLite and PostgreSQL, so later Alembic
# migrations can drop or alter it by name (SQLite batch mode needs names to do that at all).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Site(Base):
    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(128))  # sha256 hex of the site's token
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # set: the site may not connect


class Worker(Base):
    """One running worker daemon of a site (a site may restart its worker: a new row)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    state: Mapped[str] = mapped_column(String(32), default="online")  # storage.states.WorkerState
    device: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset_sizes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    worker_version: Mapped[str] = mapped_column(String(64), default="")
    registered_at: Mapped[float] = mapped_column(Float, default=now)
    last_seen_at: Mapped[float] = mapped_column(Float, default=now)
    current_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec_yaml: Mapped[str] = mapped_column(Text)
    spec_json: Mapped[str] = mapped_column(Text)
    # storage.states.ExperimentState: submitted, running, paused, completed, failed, aborted
    state: Mapped[str] = mapped_column(String(32), default="submitted", index=True)
    current_stage_index: Mapped[int] = mapped_column(Integer, default=0)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("experiment_id", "stage_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(32))  # global, finetune, personalize
    state: Mapped[str] = mapped_column(
        String(32), default="pending"
    )  # StageState: pending, running, completed
    rounds_total: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("experiment_id", "stage_index", "round"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer)  # 1-based within the stage
    # storage.states.RoundState: open, collecting, aggregating, committed, failed
    state: Mapped[str] = mapped_column(String(32), default="open", index=True)
    base_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # version trained from
    selected_sites: Mapped[list[Any]] = mapped_column(default=list)
    min_updates: Mapped[int] = mapped_column(Integer, default=1)
    opened_at: Mapped[float] = mapped_column(Float, default=now)
    deadline_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    round_id: Mapped[str | None] = mapped_column(ForeignKey("rounds.id"), nullable=True, index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # init, train, personalize
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    # storage.states.TaskState: pending, leased, done, failed, cancelled
    state: Mapped[str] = mapped_column(String(32), default="pending", index=True)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # start from
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    num_examples: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)


class Update(Base):
    """An update pushed for a task. Its bytes live in a spool file until the round commits."""

    __tablename__ = "updates"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), unique=True)
    round_id: Mapped[str | None] = mapped_column(ForeignKey("rounds.id"), nullable=True, index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    # storage.states.UpdateState: verified, folded, rejected (a row is made only for a complete upload)
    state: Mapped[str] = mapped_column(String(32), default="verified")
    num_examples: Mapped[int] = mapped_column(BigInteger, default=0)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)  # side file name -> blob digest
    digest: Mapped[str] = mapped_column(String(64), default="")
    spool_path: Mapped[str] = mapped_column(Text, default="")
    received_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # full-model updates pass 2 GiB
    created_at: Mapped[float] = mapped_column(Float, default=now)
    folded_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("experiment_id", "version"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # 0 = initial tensors, then one per committed round
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True, index=True)
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    stage_name: Mapped[str] = mapped_column(String(100), default="")
    round: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(32), default="adapter")  # storage.states.VersionKind
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)  # one site's only
    blob_digest: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)  # side file name -> blob digest
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sites: Mapped[list[Any]] = mapped_column(default=list)  # contributing site names
    num_examples: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    # Retention (coordinator/retention.py): a pinned version is never pruned; a pruned one keeps its row
    # (metrics, lineage) but its blobs may be collected (its tensors can no longer be fetched or exported).
    pinned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    pin_reason: Mapped[str] = mapped_column(Text, default="")
    pruned_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class StrategyState(Base):
    """Server-side strategy state (e.g. FedAdam moments) after a round, kept as a blob."""

    __tablename__ = "strategy_states"
    __table_args__ = (UniqueConstraint("experiment_id", "stage_index", "round"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer)
    blob_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scalars: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Event(Base):
    """Audit log and the source of `fedtune admin watch`."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    experiment_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SecAggRound(Base):
    """A secure-aggregation round's protocol state (docs/privacy.md): its phase and the split it named.

    phase: advertise -> share -> train -> unmask (then the round commits or fails like any other)."""

    __tablename__ = "secagg_rounds"
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(32), default="advertise")
    phase_started_at: Mapped[float] = mapped_column(Float, default=now)
    num_sites: Mapped[int] = mapped_column(Integer)
    graph_seed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # set when sharing starts
    survivors: Mapped[list[Any]] = mapped_column(default=list)  # site indices, set when unmasking starts
    dropped: Mapped[list[Any]] = mapped_column(default=list)


class SecAggSite(Base):
    """One selected site of a secure-aggregation round: its index, advertised keys, and how far it got."""

    __tablename__ = "secagg_sites"
    __table_args__ = (UniqueConstraint("round_id", "site_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), index=True)
    site_index: Mapped[int] = mapped_column(Integer)  # rank of the site's name among the selected sites
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    cipher_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    mask_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    seed_commitment: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    shared_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # dealt its share boxes
    revealed_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # revealed its shares


class SecAggShare(Base):
    """A sealed share box from `owner` to `holder` (relayed, unreadable here), and what the holder later
    revealed of it: one share, of the owner's seed or of its mask key (never both)."""

    __tablename__ = "secagg_shares"
    __table_args__ = (UniqueConstraint("round_id", "owner", "holder"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), index=True)
    owner: Mapped[int] = mapped_column(Integer)
    holder: Mapped[int] = mapped_column(Integer)
    box: Mapped[bytes] = mapped_column(LargeBinary)
    revealed_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # seed | mask_key
    revealed_x: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revealed_share: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
