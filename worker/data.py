"""Site-local data: JSONL or CSV (chosen by extension) with the spec's text and label fields, or
instruction examples (`messages`, or `prompt` / `response`) for the instruction task.

Every problem names the file, line and field, so a site admin can fix the data without reading code,
and never quotes a value from the data: a task's error goes to the coordinator (docs/decisions.md 24).
A spec names its files relative to the data root; `data_file` refuses any that lead out of it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import DataSpec, site_path_problem

DATA_SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class Example:
    text: str
    label: int | None  # class id (sequence classification), None for unlabelled text


def data_file(data_root: Path, name: str) -> Path:
    """The spec's data file `name` inside `data_root`, symlinks resolved; refused if it leads outside.

    The spec was checked on the coordinator (fedtune.spec.site_path_problem); the worker checks again
    because the spec comes over the network, and resolves symlinks, which only the site can see: a link
    inside the data root that points elsewhere on this machine is refused, not followed.
    """
    problem = site_path_problem(name)
    if problem is not None:
        raise FedtuneError(ErrorCode.INVALID_SPEC, f"data file {name!r} {problem}")
    root = Path(data_root).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise FedtuneError(
            ErrorCode.PERMISSION_DENIED,
            f"data file {name!r} resolves outside the data root {root} (through a symbolic link); "
            "put the file itself under --data-root, or point --data-root at the folder that holds it",
        )
    return path


def check_data_paths(data: DataSpec, data_root: Path) -> None:
    """Refuse, before anything is loaded or read, a spec whose data files leave `data_root`."""
    for name in (data.train, data.eval, data.unlabelled):
        if name is not None:
            data_file(data_root, name)


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
    """(line number, record) for every non-blank record.

    Parser errors are re-raised without their text: `csv.Error` and `UnicodeDecodeError` messages can
    quote bytes of the file. `JSONDecodeError.msg` is the parser's fixed wording (the document is in
    `.doc`, never used here).
    """
    line_no = 0
    try:
        if path.suffix.lower() == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise _bad(path, line_no, f"not valid JSON ({err.msg}, column {err.colno})") from None
                    if not isinstance(record, dict):
                        raise _bad(path, line_no, "each line must be a JSON object")
                    yield line_no, record
        else:
            with path.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                try:
                    for record in reader:
                        line_no = reader.line_num
                        if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                            continue
                        yield line_no, record
                except csv.Error:
                    # The failing record starts after the last good one and may span several lines.
                    raise _bad(
                        path,
                        max(reader.line_num, line_no + 1),
                        "not valid CSV from this line on (an unclosed quote, a NUL byte or a field over "
                        f"{csv.field_size_limit()} characters)",
                    ) from None
    except UnicodeDecodeError:
        raise _bad(
            path, line_no + 1, "not valid UTF-8 text (at or after this line); save it as UTF-8"
        ) from None


def _label_id(raw: Any, labels: list[str], field: str, path: Path, line: int) -> int:
    """The class id of a label value. Errors name the field and the spec's labels, never the value."""
    if isinstance(raw, str):
        if raw in labels:
            return labels.index(raw)
        try:
            raw = int(raw.strip())
        except ValueError:
            raise _bad(
                path, line, f"field {field!r} holds a label that is not one of the spec's labels {labels}"
            ) from None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _bad(
            path,
            line,
            f"field {field!r} must be a class name from {labels} or an integer id, "
            f"not a JSON {_json_type(raw)}",
        )
    if not 0 <= raw < len(labels):
        raise _bad(
            path, line, f"field {field!r} holds a label id outside 0..{len(labels) - 1} (labels {labels})"
        )
    return raw


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", float: "number", int: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


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
            label = _label_id(record[label_field], labels, label_field, path, line)
        examples.append(Example(text, label))
    if not examples:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"data file {path} has no examples")
    return examples


CHAT_ROLES = ("system", "user", "assistant")
MAX_CHAT_MESSAGES = 1024  # messages in one conversation


@dataclass(frozen=True)
class Conversation:
    """One instruction example: (role, content) messages, at least one from the assistant."""

    messages: tuple[tuple[str, str], ...]
    where: str  # "file:line", for errors about this example (never its content)

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def _string_field(record: dict[str, Any], field: str, path: Path, line: int) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        raise _bad(path, line, f"field {field!r} must be a string, not a JSON {_json_type(value)}")
    return value


def _messages(raw: Any, path: Path, line: int) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise _bad(path, line, "field 'messages' must be a non-empty JSON array of {role, content} objects")
    if len(raw) > MAX_CHAT_MESSAGES:
        raise _bad(path, line, f"field 'messages' has more than {MAX_CHAT_MESSAGES} messages; split it")
    out = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(path, line, f"{where} must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise _bad(path, line, f"{where}.role must be one of {list(CHAT_ROLES)}")
        if not isinstance(content, str):
            raise _bad(path, line, f"{where}.content must be a string, not a JSON {_json_type(content)}")
        out.append((str(role), content))
    if not any(role == "assistant" for role, _ in out):
        raise _bad(path, line, "field 'messages' has no assistant message: there is nothing to learn")
    return tuple(out)


def load_conversations(path: Path) -> list[Conversation]:
    """Instruction examples: a `messages` array (chat format), or `prompt` + `response` strings with an
    optional `system` string (JSONL or CSV). Errors name file, line and field, never a value."""
    path = Path(path)
    _check_path(path)
    out: list[Conversation] = []
    for line, record in _rows(path):
        if "messages" in record:
            messages = _messages(record["messages"], path, line)
        elif "prompt" in record or "response" in record:
            turns = [("user", _string_field(record, "prompt", path, line))]
            turns.append(("assistant", _string_field(record, "response", path, line)))
            if record.get("system") not in (None, ""):
                turns.insert(0, ("system", _string_field(record, "system", path, line)))
            messages = tuple(turns)
        else:
            raise _bad(path, line, "needs a 'messages' array or 'prompt' and 'response' fields")
        out.append(Conversation(messages, f"{path}:{line}"))
    if not out:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"data file {path} has no examples")
    return out


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
