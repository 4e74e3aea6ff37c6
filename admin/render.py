"""Output of `fedtune admin`: JSON documents for scripts, rich tables for people."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedtune.v1 import admin_pb2

# ---- JSON ---------------------------------------------------------------------------------------


def to_jsonable(message: Message) -> dict[str, Any]:
    """Every field of `message` (defaults included) under its proto name; int64 stay numbers."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _scalar(value_field, v) for k, v in sorted(value.items())}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        elif field.message_type is not None:
            out[field.name] = to_jsonable(value) if message.HasField(field.name) else None
        else:
            out[field.name] = _scalar(field, value)
    return out


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return to_jsonable(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    return value


def dump_json(document: Any, *, lines: bool = False) -> str:
    """One JSON document (pretty) or one JSON line (for streams)."""
    if lines:
        return json.dumps(document, separators=(",", ":"), sort_keys=False)
    return json.dumps(document, indent=2, sort_keys=False)


# ---- human --------------------------------------------------------------------------------------


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr); wide when not a terminal so IDs never wrap in pipes and logs."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    return console


def fmt_time(unix: float) -> str:
    """Local time as `2025-03-01 14:02:07`; `-` when unset."""
    if not unix:
        return "-"
    return dt.datetime.fromtimestamp(unix).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_time_short(unix: float) -> str:
    """Local time to the minute, `2025-03-01 14:02`, for table cells; `-` when unset."""
    return fmt_time(unix)[:16] if unix else "-"


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def fmt_metrics(metrics: Mapping[str, float]) -> str:
    """`accuracy=0.8812 loss=0.3021` (4 significant digits, sorted by name); `-` when empty."""
    if not metrics:
        return "-"
    return " ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items()))


def fmt_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def _or_dash(value: object) -> str:
    return str(value) if value not in ("", None) else "-"


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A compact table of plain-text cells (data is never read as rich markup).

    Columns that are empty in every row are left out, so wide tables still fit a terminal.
    """
    cells = [[_or_dash(cell) for cell in row] for row in rows]
    keep = [i for i in range(len(columns)) if i == 0 or not cells or any(row[i] != "-" for row in cells)]
    result = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    for i in keep:
        result.add_column(
            columns[i], overflow="fold"
        )  # wraps at spaces first; folds a long id only if it must
    for row in cells:
        result.add_row(*(Text(row[i]) for i in keep))
    return result


def key_values(title: str | None, pairs: Sequence[tuple[str, object]]) -> Table:
    result = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    result.add_column(style="bold")
    result.add_column(overflow="fold")
    for key, value in pairs:
        result.add_row(Text(key), Text(_or_dash(value)))
    return result


def experiments_table(experiments: Sequence[admin_pb2.Experiment]) -> Table:
    return table(
        None,
        ["ID", "NAME", "STATE", "STAGE", "ROUND", "LATEST MODEL", "UPDATED"],
        (
            [
                e.experiment_id,
                e.name,
                e.state,
                _stage(e),
                e.current_round or "-",
                e.latest_model_version_id,
                fmt_time_short(e.updated_unix),
            ]
            for e in experiments
        ),
    )


def _stage(e: admin_pb2.Experiment) -> str:
    return f"{e.current_stage_index}:{e.current_stage}" if e.current_stage else "-"


def experiment_details(e: admin_pb2.Experiment) -> Table:
    return key_values(
        f"Experiment {e.experiment_id}",
        [
            ("name", e.name),
            ("state", e.state),
            ("stage", _stage(e)),
            ("round", e.current_round or "-"),
            ("latest model", e.latest_model_version_id),
            ("created", fmt_time(e.created_unix)),
            ("updated", fmt_time(e.updated_unix)),
            ("error", e.error),
            ("waiting", e.waiting_reason),
            *privacy_rows(e),
        ],
    )


def privacy_rows(e: admin_pb2.Experiment) -> list[tuple[str, object]]:
    """(epsilon, delta) spent, the budget, and whether it stopped the experiment (privacy.dp only)."""
    if not e.HasField("privacy"):
        return []
    p = e.privacy
    budget = f" of target {p.target_epsilon:g}" if p.target_epsilon > 0 else " (no target_epsilon)"
    spent = f"epsilon {p.epsilon:.3f}{budget} at delta {p.delta:g}"
    rows: list[tuple[str, object]] = [
        ("privacy", f"{p.level}-level DP, {p.accountant} accountant, {p.rounds} round(s): {spent}")
    ]
    if p.site_epsilons:
        rows.append(
            ("epsilon by site", ", ".join(f"{k} {v:.3f}" for k, v in sorted(p.site_epsilons.items())))
        )
    if p.budget_spent:
        rows.append(("budget spent", p.budget_spent))
    return rows


PRIVACY_EPSILON, PRIVACY_DELTA = "privacy.epsilon", "privacy.delta"


def _privacy(r: admin_pb2.RoundInfo) -> str:
    if PRIVACY_EPSILON not in r.metrics:
        return "-"
    return f"({r.metrics[PRIVACY_EPSILON]:.3f}, {r.metrics.get(PRIVACY_DELTA, 0.0):g})"


def rounds_table(rounds: Sequence[admin_pb2.RoundInfo]) -> Table:
    """The rounds; with a "(EPS, DELTA)" column (privacy spent after the round) under privacy.dp."""
    private = any(PRIVACY_EPSILON in r.metrics for r in rounds)
    columns = ["STAGE", "ROUND", "STATE", "UPDATES", "OPENED", "CLOSED", "METRICS", "MODEL"]
    columns += ["(EPS, DELTA)"] * private + ["WAITING FOR", "REASON"]
    return table(
        None,
        columns,
        (
            [
                r.stage,
                r.round,
                r.state,
                f"{r.updates_received}/{r.tasks_total}",
                fmt_time_short(r.opened_unix),
                _closed_or_due(r),
                fmt_metrics(r.metrics),
                r.model_version_id,
                *([_privacy(r)] * private),
                _names(r.waiting_for),
                "; ".join(text for text in (r.reason, r.waiting_reason) if text),
            ]
            for r in rounds
        ),
    )


def site_updates_table(rounds: Sequence[admin_pb2.RoundInfo]) -> Table:
    """Each accepted update of each round: the site's examples, aggregation weight, metrics, size."""
    return table(
        "updates by site",
        ["STAGE", "ROUND", "SITE", "EXAMPLES", "WEIGHT", "METRICS", "RECEIVED"],
        (
            [
                r.stage,
                r.round,
                u.site,
                u.num_examples,
                f"{u.weight:.4g}" if u.state == "folded" else "-",
                fmt_metrics(u.metrics),
                fmt_bytes(u.received_bytes),
            ]
            for r in rounds
            for u in r.site_updates
        ),
    )


def _names(names: Sequence[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" +{len(names) - shown}" if len(names) > shown else "")


def _closed_or_due(r: admin_pb2.RoundInfo) -> str:
    if r.closed_unix:
        return fmt_time_short(r.closed_unix)
    return f"due {fmt_time_short(r.deadline_unix)}" if r.deadline_unix else "-"


def sites_table(sites: Sequence[admin_pb2.SiteInfo]) -> Table:
    return table(
        None,
        ["SITE", "STATE", "WORKERS ONLINE", "LAST SEEN", "CREATED", "REVOKED"],
        (
            [
                s.name,
                "revoked" if s.revoked_unix else "active",
                s.workers_online,
                fmt_time_short(s.last_seen_unix),
                fmt_time_short(s.created_unix),
                fmt_time_short(s.revoked_unix),
            ]
            for s in sites
        ),
    )


def workers_table(workers: Sequence[admin_pb2.WorkerInfo]) -> Table:
    return table(
        None,
        ["SITE", "WORKER", "STATE", "DEVICE", "LAST SEEN", "TASK", "DATASETS"],
        (
            [
                w.site,
                w.worker_id,
                w.state,
                w.device,
                fmt_time_short(w.last_seen_unix),
                w.current_task_id,
                " ".join(f"{k}={v}" for k, v in sorted(w.dataset_sizes.items())) or "-",
            ]
            for w in workers
        ),
    )


def models_table(models: Sequence[admin_pb2.ModelVersion]) -> Table:
    return table(
        None,
        ["VERSION ID", "EXPERIMENT", "KIND", "STAGE", "ROUND", "EXAMPLES", "METRICS", "CREATED", "KEPT"],
        (
            [
                m.version_id,
                m.experiment_id,
                m.kind,
                m.stage,
                m.round,
                m.num_examples or "-",
                fmt_metrics(m.metrics),
                fmt_time_short(m.created_unix),
                _retention(m),
            ]
            for m in models
        ),
    )


def _retention(m: admin_pb2.ModelVersion) -> str:
    if m.pruned_unix:
        return f"pruned {fmt_time_short(m.pruned_unix)}"
    return f"pinned: {m.pinned}" if m.pinned else "-"


def storage_usage_details(u: admin_pb2.StorageUsage) -> list[Table]:
    keep = f"last {u.retention_keep_last} + stage finals, pinned, in use" if u.retention_keep_last else "all"
    summary = key_values(
        "Storage",
        [
            ("blobs", f"{u.blob_count} ({fmt_bytes(u.blob_bytes)})"),
            ("unreferenced blobs", f"{u.unreferenced_blobs} ({fmt_bytes(u.unreferenced_bytes)})"),
            ("spool", fmt_bytes(u.spool_bytes)),
            ("stale spool", fmt_bytes(u.stale_spool_bytes)),
            ("work", fmt_bytes(u.work_bytes)),
            ("retention keeps", keep),
            ("versions to prune", u.versions_to_prune),
        ],
    )
    experiments = table(
        "By experiment",
        ["EXPERIMENT", "NAME", "VERSIONS", "PRUNED", "VERSION BYTES", "SPOOL"],
        (
            [
                e.experiment_id,
                e.name,
                e.versions,
                e.versions_pruned,
                fmt_bytes(e.version_bytes),
                fmt_bytes(e.spool_bytes),
            ]
            for e in u.experiments
        ),
    )
    return [summary, experiments] if u.experiments else [summary]


def gc_report_details(r: admin_pb2.CollectGarbageReport) -> Table:
    title = "Garbage collection (dry run: nothing deleted)" if r.dry_run else "Garbage collection"
    return key_values(
        title,
        [
            ("versions pruned", r.versions_pruned),
            ("strategy states deleted", r.strategy_states_deleted),
            ("blobs deleted", f"{r.blobs_deleted} ({fmt_bytes(r.blob_bytes_freed)})"),
            ("blobs kept (grace period)", r.blobs_kept_young),
            ("spool entries deleted", f"{r.spool_entries_deleted} ({fmt_bytes(r.spool_bytes_freed)})"),
            ("took", fmt_duration(r.seconds)),
        ],
    )


def model_details(m: admin_pb2.ModelVersion) -> list[Table]:
    total = sum(t.nbytes for t in m.manifest.tensors)
    summary = key_values(
        f"Model version {m.version_id}",
        [
            ("experiment", m.experiment_id),
            ("version", m.version),
            ("kind", m.kind),
            ("stage", m.stage),
            ("round", m.round),
            ("parent", m.parent_id),
            ("sites", ", ".join(m.sites)),
            ("examples", m.num_examples or "-"),
            ("metrics", fmt_metrics(m.metrics)),
            ("blob", m.blob_digest),
            ("tensors", f"{len(m.manifest.tensors)} ({fmt_bytes(total)})"),
            ("files", ", ".join(m.files)),
            ("created", fmt_time(m.created_unix)),
            ("retention", _retention(m)),
        ],
    )
    tensors = table(
        "Tensors",
        ["NAME", "DTYPE", "SHAPE", "SIZE"],
        (
            [t.name, t.dtype, "x".join(str(d) for d in t.shape) or "scalar", fmt_bytes(t.nbytes)]
            for t in m.manifest.tensors
        ),
    )
    return [summary, tensors] if m.manifest.tensors else [summary]


def status_details(s: admin_pb2.CoordinatorStatus, target: str) -> Table:
    return key_values(
        f"Coordinator {target}",
        [
            ("version", s.version),
            ("uptime", fmt_duration(s.uptime_seconds)),
            ("experiments running", s.experiments_running),
            ("workers online", s.workers_online),
            ("database", s.database),
            ("data dir", s.data_dir),
        ],
    )


def event_line(e: admin_pb2.Event) -> Text:
    """`2025-03-01 14:02:07  #42  exp-1  round.committed  round 3 committed`"""
    line = Text()
    line.append(fmt_time(e.created_unix), style="dim")
    line.append(f"  #{e.event_id}  ")
    line.append(e.experiment_id or "-", style="cyan")
    line.append("  ")
    line.append(e.kind, style="bold")
    if e.message:
        line.append(f"  {e.message}")
    return line


def plain(message: str) -> Text:
    """Text printed as is: data from the server is never read as rich markup."""
    return Text(message)
