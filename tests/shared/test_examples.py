"""The example specs in examples/ stay valid: the coordinator would accept each one."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.experiments import validate_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_is_valid(path: Path) -> None:
    spec = validate_spec(path.read_text())  # what SubmitExperiment runs: spec, stage order, strategies

    assert spec.stages
