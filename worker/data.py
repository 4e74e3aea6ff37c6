"""Site-local data: JSONL or CSV (chosen by extension) with the spec's text and label fields.

Every problem names the file and line, so a site admin can fix the data without reading code.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtune.errors import ErrorCode, FedtuneError

DATA_SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class Example:
    text: str
    label: int | None  # class id (sequence classification), None for unlabelled text


def _bad(path: Path, line: int, what: str) -> FedtuneError:
    return FedtuneError(ErrorCode.INVALID_ARGUMENT, f"{path}:{line}: {what}")


def _check_path(path: Path) -> None:
    if not path.is_file():
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"data file {path} does not exist (check --data-root)")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"data file {path}: unsupported extension; use .jsonl or .csv"
        )


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank record."""
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise _bad(path, line_no, f"not valid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise _bad(path, line_no, "each line must be a JSON object")
                yield line_no, record
    else:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for record in reader:
                if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                    continue
                yield reader.line_num, record


def _label_id(raw: Any, labels: list[str], path: Path, line: int) -> int:
    if isinstance(raw, str):
        if raw in labels:
            return labels.index(raw)
        stripped = raw.strip()
        if stripped.lstrip("-").isdigit():
            raw = int(stripped)
        else:
            raise _bad(path, line, f"label {raw!r} is not one of the spec's labels {labels}")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _bad(path, line, f"label {raw!r} must be a class name from {labels} or an integer id")
    if not 0 <= raw < len(labels):
        raise _bad(path, line, f"label id {raw} is outside 0..{len(labels) - 1} (labels {labels})")
    return raw


def load_examples(
    path: Path, *, text_field: str, label_field: str | None = None, labels: list[str] | None = None
) -> list[Example]:
    """Read every example; with `label_field` and `labels`, labels are required and mapped to ids."""
    path = Path(path)
    _check_path(path)
    examples: list[Example] = []
    for line, record in _rows(path):
        text = record.get(text_field)
        if text is None:
            raise _bad(path, line, f"missing text field {text_field!r}")
        if not isinstance(text, str):
            raise _bad(path, line, f"field {text_field!r} must be a string")
        label: int | None = None
        if label_field is not None and labels is not None:
            if record.get(label_field) in (None, ""):
                raise _bad(path, line, f"missing label field {label_field!r}")
            label = _label_id(record[label_field], labels, path, line)
        examples.append(Example(text, label))
    if not examples:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"data file {path} has no examples")
    return examples


def count_examples(path: Path) -> int:
    """Cheap count of records (non-blank lines; CSV: minus the header). No parsing."""
    path = Path(path)
    _check_path(path)
    with path.open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    if path.suffix.lower() == ".csv":
        lines = max(0, lines - 1)
    return lines


def dataset_sizes(data_root: Path) -> dict[str, int]:
    """Examples per *.jsonl / *.csv file directly under data_root (for the worker's registration)."""
    root = Path(data_root)
    if not root.is_dir():
        return {}
    return {
        p.name: count_examples(p)
        for p in sorted(root.iterdir())
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
    }
