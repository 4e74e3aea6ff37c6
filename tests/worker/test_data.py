from __future__ import annotations

from pathlib import Path

import pytest

from fedtune.errors import ErrorCode, FedtuneError
from worker.data import count_examples, dataset_sizes, load_examples

LABELS = ["sport", "business"]


def _load(path: Path) -> list:
    return load_examples(path, text_field="text", label_field="label", labels=LABELS)


def test_loads_jsonl_with_names_and_ids(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a goal", "label": "sport"}\n\n{"text": "shares", "label": 1}\n')
    # Execute
    examples = _load(path)
    # Assert
    assert [(e.text, e.label) for e in examples] == [("a goal", 0), ("shares", 1)]


def test_loads_csv_with_names_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"a goal, again",sport\nshares,1\n')
    examples = _load(path)
    assert [(e.text, e.label) for e in examples] == [("a goal, again", 0), ("shares", 1)]


def test_rejects_missing_file_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FedtuneError) as err:
        _load(tmp_path / "nope.jsonl")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert "nope.jsonl" in err.value.message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"text": "ok", "label": "sport"}\n{"text": "bad json\n', "not valid JSON"),
        ('{"text": "ok", "label": "sport"}\n{"label": "sport"}\n', "missing text field 'text'"),
        ('{"text": "ok", "label": "sport"}\n{"text": "x"}\n', "missing label field 'label'"),
        (
            '{"text": "ok", "label": "sport"}\n{"text": "x", "label": "weather"}\n',
            "not one of the spec's labels",
        ),
        ('{"text": "ok", "label": "sport"}\n{"text": "x", "label": 7}\n', "outside 0..1"),
    ],
)
def test_rejects_bad_record_naming_file_and_line(tmp_path: Path, content: str, needle: str) -> None:
    # Prepare
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    # Execute
    with pytest.raises(FedtuneError) as err:
        _load(path)
    # Assert
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert f"{path}:2:" in err.value.message
    assert needle in err.value.message


def test_rejects_csv_label_outside_labels_naming_line(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\nok,sport\nx,weather\n")
    with pytest.raises(
        FedtuneError, match=r"train.csv:3: field 'label' holds a label that is not one"
    ) as err:
        _load(path)
    assert "weather" not in err.value.message  # the data value stays at the site


def test_counts_examples_and_dataset_sizes(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n\n')
    (tmp_path / "eval.csv").write_text("text,label\na,0\n")
    (tmp_path / "notes.txt").write_text("ignored\n")
    assert count_examples(tmp_path / "train.jsonl") == 2
    assert dataset_sizes(tmp_path) == {"eval.csv": 1, "train.jsonl": 2}
