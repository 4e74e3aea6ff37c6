"""Error feedback on a site (decision 40): the residual accumulates what top-k left out, survives a
worker restart (it is a file), and everything a site computed reaches the coordinator over rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedtune.spec import TransportSpec
from worker.compression import compress_output, wire_encoding
from worker.error_feedback import ResidualStore
from worker.task_io import TaskOutput

TOPK = TransportSpec(topk_fraction=0.1)


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "l.lora_A.weight": rng.standard_normal((4, 25)).astype(np.float32),
        "h.bias": np.zeros(3, np.float32),
    }


def _trained(base: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: a + rng.standard_normal(a.shape).astype(np.float32) for n, a in base.items()}


def _sent(base: dict[str, np.ndarray], out: TaskOutput) -> dict[str, np.ndarray]:
    """What the coordinator rebuilds from a top-k fp32 output, minus the base (the delta it receives)."""
    delta = {n: np.zeros(a.size, np.float32) for n, a in base.items()}
    for n in base:
        delta[n][out.arrays[n + "#idx"]] = out.arrays[n + "#val"]
    return {n: d.reshape(base[n].shape) for n, d in delta.items()}


def test_the_residual_holds_exactly_what_topk_left_out(tmp_path: Path) -> None:
    # Prepare
    base, store = _global(), ResidualStore(tmp_path / "residuals")
    trained = _trained(base, 1)

    # Execute
    out = compress_output(
        TaskOutput(trained, 5, {}), base, TOPK, residuals=store, experiment_id="e", stage_index=1
    )

    # Assert: residual = delta - sent, 90 % of each tensor's entries
    residual = store.load("e", 1, {n: a.shape for n, a in base.items()})
    assert residual is not None and out.encoding == wire_encoding(TOPK)
    sent = _sent(base, out)
    for n in base:
        np.testing.assert_allclose(residual[n] + sent[n], trained[n] - base[n], atol=1e-6)
        assert int((sent[n] != 0).sum()) == int(np.ceil(0.1 * base[n].size))
    assert out.metrics["compression_residual_norm"] > 0


def test_over_rounds_every_computed_delta_reaches_the_coordinator_or_stays_in_the_residual(
    tmp_path: Path,
) -> None:
    # Prepare
    base = _global()
    total_delta = {n: np.zeros_like(a) for n, a in base.items()}
    total_sent = {n: np.zeros_like(a) for n, a in base.items()}

    # Execute: five rounds, a "restarted worker" (a new store on the same folder) each round
    for round_number in range(5):
        store = ResidualStore(tmp_path / "residuals")
        trained = _trained(base, 10 + round_number)
        out = compress_output(TaskOutput(trained, 5, {}), base, TOPK, residuals=store, experiment_id="e")
        for n in base:
            total_delta[n] += trained[n] - base[n]
            total_sent[n] += _sent(base, out)[n]

    # Assert: sum(sent) + residual == sum(deltas) (nothing lost, nothing counted twice)
    residual = ResidualStore(tmp_path / "residuals").load("e", 0, {n: a.shape for n, a in base.items()})
    assert residual is not None
    for n in base:
        np.testing.assert_allclose(total_sent[n] + residual[n], total_delta[n], atol=1e-5)


def test_without_feedback_nothing_is_stored_and_a_residual_of_another_layout_is_dropped(
    tmp_path: Path,
) -> None:
    # Prepare
    base, store = _global(), ResidualStore(tmp_path / "residuals")
    no_feedback = TransportSpec(topk_fraction=0.1, error_feedback=False)

    # Execute
    compress_output(
        TaskOutput(_trained(base, 1), 5, {}), base, no_feedback, residuals=store, experiment_id="e"
    )
    nothing = store.load("e", 0, {n: a.shape for n, a in base.items()})
    store.save("e", 0, {"other": np.ones(2, np.float32)})
    mismatched = store.load("e", 0, {n: a.shape for n, a in base.items()})

    # Assert
    assert nothing is None and mismatched is None


def test_a_plain_transport_leaves_the_output_untouched() -> None:
    # Prepare
    base = _global()
    output = TaskOutput(_trained(base, 1), 5, {"train_loss": 1.0})

    # Execute / Assert
    assert compress_output(output, base, TransportSpec()) is output


def test_class_statistics_rounds_go_out_plain(tmp_path: Path) -> None:
    # Prepare: a fedncm round (its stage's training carries class_statistics) in an int8 experiment
    from fedtune.spec import parse_spec
    from worker.compression import compress_train_output

    spec = parse_spec(
        {
            "name": "t",
            "base_model": {"name": "m"},
            "labels": ["a", "b"],
            "transport": {"update_encoding": "int8"},
            "stages": [
                {"kind": "finetune", "training": {"class_statistics": "classifier"}},
                {"kind": "finetune", "name": "tune"},
            ],
        }
    )
    base = _global()
    output = TaskOutput(_trained(base, 1), 5, {})
    store = ResidualStore(tmp_path)

    # Execute
    statistics = compress_train_output(output, spec, 0, base, store, "e")
    tuned = compress_train_output(output, spec, 1, base, store, "e")

    # Assert
    assert statistics is output and statistics.encoding.is_plain
    assert tuned.encoding.values == "int8" and tuned.arrays["h.bias"].dtype == np.int8
