"""Door limits: how big, how many and which values a site (or an admin) may send.

One table of named limits and the checks that enforce them. The coordinator calls the ``check_*``
functions before anything reaches the database, so SQLite and PostgreSQL answer the same
INVALID_ARGUMENT (PostgreSQL cannot store NUL in text, NaN in JSON or 3e9 in an INTEGER column;
SQLite takes all three). The worker uses ``clip_metrics`` and ``clip_text`` so that a well-behaved
site never sends what the door refuses. Every error names the field and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedtune.errors import ErrorCode, FedtuneError

# --- text sent by a site -------------------------------------------------------------------------
MAX_ERROR_CHARS = 4000  # ReportResult.error (the worker sends at most 2,000)
MAX_PROGRESS_CHARS = 1000  # Heartbeat.progress (the worker sends at most 500)
MAX_WORKER_VERSION_CHARS = 64  # workers.worker_version is String(64)
MAX_DEVICE_TEXT_CHARS = 200  # DeviceInfo.kind / .name
MAX_ID_CHARS = 64  # task / worker ids are String(64)
MAX_SITE_NAME_CHARS = 200  # sites.name is String(200)
# --- metrics -------------------------------------------------------------------------------------
MAX_METRICS = 64  # keys per update / result
MAX_METRIC_KEY_CHARS = 64
# --- dataset sizes reported at Register ----------------------------------------------------------
MAX_DATASET_ENTRIES = 256
MAX_DATASET_NAME_CHARS = 255  # one file name
MAX_DATASET_SIZE = 10**12
# --- update headers ------------------------------------------------------------------------------
MAX_TENSORS = 20_000  # a 70B-parameter model has under 1,000 tensors; LoRA on it a few thousand
MAX_TENSOR_NAME_CHARS = 512
MAX_SIDE_FILES = 16
MAX_SIDE_FILE_NAME_CHARS = 128
MAX_SIDE_FILE_BYTES = 16 << 20  # frozen FFA-LoRA A matrices of a 7B model fit; gRPC caps a message at 32 MiB
MAX_SIDE_FILES_BYTES = 24 << 20
# safetensors keeps its own metadata under this key in the header; a tensor may not take the name
SAFETENSORS_METADATA_KEY = "__metadata__"
# --- admin responses -----------------------------------------------------------------------------
MAX_EVENT_MESSAGE_CHARS = 2000  # one WatchEvents message
MAX_EVENT_DATA_BYTES = 8192  # one event's data_json
TRUNCATED_MARK = " …[truncated]"


def _fail(field: str, problem: str) -> FedtuneError:
    return FedtuneError(ErrorCode.INVALID_ARGUMENT, f"{field} {problem}")


def control_character(text: str) -> str | None:
    """The first control character in `text` (NUL included; tab and newline allowed), or None."""
    for char in text:
        if (ord(char) < 32 and char not in "\t\n\r") or ord(char) == 127:
            return char
    return None


def check_text(field: str, value: str, max_chars: int, *, multiline: bool = True) -> None:
    """INVALID_ARGUMENT when `value` is longer than `max_chars` or holds NUL / control characters."""
    if len(value) > max_chars:
        raise _fail(field, f"has {len(value)} characters; the limit is {max_chars}: send a shorter one")
    bad = control_character(value)
    if bad is None and not multiline and any(c in value for c in "\t\n\r"):
        bad = next(c for c in value if c in "\t\n\r")
    if bad is not None:
        raise _fail(
            field, f"holds the control character {bad!r} (NUL and control characters cannot be stored)"
        )


def check_name(field: str, value: str, max_chars: int) -> None:
    """A one-line, non-empty name without control characters."""
    if not value:
        raise _fail(field, "is empty")
    check_text(field, value, max_chars, multiline=False)


def check_finite(field: str, value: float, max_abs: float | None = None) -> None:
    if not math.isfinite(value):
        raise _fail(field, f"is {value}; only finite numbers are accepted")
    if max_abs is not None and abs(value) > max_abs:
        raise _fail(field, f"is {value:g}; its magnitude must be at most {max_abs:g}")


def check_metrics(field: str, metrics: Mapping[str, float]) -> None:
    """At most MAX_METRICS finite values under short, printable names."""
    if len(metrics) > MAX_METRICS:
        raise _fail(field, f"has {len(metrics)} entries; the limit is {MAX_METRICS}: send fewer metrics")
    for key, value in metrics.items():
        check_name(f"{field} key {key[:40]!r}", key, MAX_METRIC_KEY_CHARS)
        check_finite(f"{field}[{key!r}]", float(value))


def check_num_examples(field: str, value: int, max_examples: int) -> None:
    if not 0 <= value <= max_examples:
        raise _fail(
            field,
            f"is {value}; it must be between 0 and {max_examples} (the coordinator's max_update_examples)",
        )


def check_id(field: str, value: str) -> None:
    """A task or worker id as the caller quoted it (may be empty: the lookup then says NOT_FOUND)."""
    check_text(field, value, MAX_ID_CHARS, multiline=False)


def check_dataset_sizes(field: str, sizes: Mapping[str, int]) -> None:
    if len(sizes) > MAX_DATASET_ENTRIES:
        raise _fail(field, f"has {len(sizes)} entries; the limit is {MAX_DATASET_ENTRIES}")
    for name, size in sizes.items():
        check_name(f"{field} key {name[:40]!r}", name, MAX_DATASET_NAME_CHARS)
        if not 0 <= size <= MAX_DATASET_SIZE:
            raise _fail(f"{field}[{name!r}]", f"is {size}; it must be between 0 and {MAX_DATASET_SIZE}")


def check_tensor_names(field: str, names: list[str]) -> None:
    """At most MAX_TENSORS names; each printable, one line, no path separator, not safetensors' own key."""
    if len(names) > MAX_TENSORS:
        raise _fail(field, f"lists {len(names)} tensors; the limit is {MAX_TENSORS}")
    for index, name in enumerate(names):
        where = f"{field} tensor {index}"
        check_name(where, name, MAX_TENSOR_NAME_CHARS)
        if "/" in name or "\\" in name or name == SAFETENSORS_METADATA_KEY or name != name.strip():
            raise _fail(
                where,
                f"is named {name[:80]!r}; a tensor name has no '/', '\\' or surrounding spaces and is "
                f"not {SAFETENSORS_METADATA_KEY!r}",
            )


def check_side_files(field: str, files: Mapping[str, bytes]) -> None:
    """Plain file names (no folders, no '..'), a bounded count and bounded sizes."""
    if len(files) > MAX_SIDE_FILES:
        raise _fail(field, f"has {len(files)} side files; the limit is {MAX_SIDE_FILES}")
    total = 0
    for name, data in files.items():
        where = f"{field} name {name[:40]!r}"
        check_name(where, name, MAX_SIDE_FILE_NAME_CHARS)
        if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
            raise _fail(where, "must be a plain file name: no '/', '\\', and not starting with '.'")
        if len(data) > MAX_SIDE_FILE_BYTES:
            raise _fail(f"{field}[{name!r}]", f"has {len(data)} bytes; the limit is {MAX_SIDE_FILE_BYTES}")
        total += len(data)
    if total > MAX_SIDE_FILES_BYTES:
        raise _fail(field, f"hold {total} bytes together; the limit is {MAX_SIDE_FILES_BYTES}")


# --- what a well-behaved sender (the worker) uses --------------------------------------------------
def clip_text(value: str, max_chars: int) -> str:
    """`value` without control characters (tab/newline kept), cut to `max_chars`."""
    cleaned = "".join(c if control_character(c) is None else "?" for c in value)
    if len(cleaned) <= max_chars:
        return cleaned
    return cleaned[: max(0, max_chars - len(TRUNCATED_MARK))] + TRUNCATED_MARK


def clip_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics the door accepts: finite values under valid names, the first MAX_METRICS by name."""
    kept: dict[str, float] = {}
    for key in sorted(metrics):
        value = float(metrics[key])
        if len(kept) >= MAX_METRICS:
            break
        if not key or len(key) > MAX_METRIC_KEY_CHARS or control_character(key) or not math.isfinite(value):
            continue
        kept[key] = value
    return kept


def bounded_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """Stored metrics as an admin response shows them: numbers only, bounded like `clip_metrics`."""
    numbers = {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return clip_metrics(numbers)
