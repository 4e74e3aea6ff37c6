"""The weighted-mean family against a plain numpy reference, across two rounds with state carried."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies import UpdateInfo, build_strategy
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import from_float32, to_float32
from tests.strategies.helpers import (
    FLOAT32_LAYOUT,
    MIXED_LAYOUT,
    make_round,
    read_float64,
    run_round,
    write_tensors,
)
from tests.strategies.reference import SERVER_OPTIMISERS, server_optimiser_rounds

Arrays = dict[str, np.ndarray]


def weighted_mean(updates: list[Arrays], weights: list[float]) -> Arrays:
    total = sum(weights)
    return {k: sum(w * u[k] for u, w in zip(updates, weights, strict=True)) / total for k in updates[0]}


def test_fedavg_is_the_example_weighted_mean(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(10), layout=FLOAT32_LAYOUT, sites=4)
    updates = [read_float64(u.path) for u in files.updates]

    result = read_float64(run_round(build_strategy("fedavg", {}), files).new_tensors_path)

    expected = weighted_mean(updates, [u.num_examples for u in files.updates])
    for key in expected:
        np.testing.assert_allclose(result[key], expected[key].astype(np.float32), rtol=1e-6, atol=1e-7)


def test_fedavg_narrows_the_mean_to_each_tensors_dtype(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(11), layout=MIXED_LAYOUT)
    updates = [read_float64(u.path) for u in files.updates]

    result = read_float64(run_round(build_strategy("fedavg", {}), files).new_tensors_path)

    expected = weighted_mean(updates, [u.num_examples for u in files.updates])
    for key, (dtype, _) in MIXED_LAYOUT.items():
        narrowed = to_float32(from_float32(expected[key].astype(np.float32).reshape(-1), dtype), dtype)
        np.testing.assert_array_equal(result[key].reshape(-1), narrowed)


def test_fedavg_with_zero_total_weight_is_a_wrong_state_error(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(12), layout=FLOAT32_LAYOUT, sites=2)
    strategy = build_strategy("fedavg", {})
    strategy.begin_round(files.inputs)
    for update in files.updates:
        strategy.fold(update, 0.0)

    with pytest.raises(FedtuneError) as err:
        strategy.finish_round()

    assert err.value.code is ErrorCode.WRONG_STATE and "total weight 0" in err.value.message


def test_fedavg_rejects_update_with_non_finite_values_until_round_restarts(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(13), layout=FLOAT32_LAYOUT, sites=1)
    bad = tmp_path / "nan.safetensors"
    write_tensors(bad, {"a": np.full((7, 5), np.nan), "b": np.zeros(11)}, FLOAT32_LAYOUT)
    strategy = build_strategy("fedavg", {})
    strategy.begin_round(files.inputs)

    with pytest.raises(FedtuneError) as fold_err:
        strategy.fold(UpdateInfo(bad, 5, {}, "evil"), 5.0)
    with pytest.raises(FedtuneError) as finish_err:
        strategy.finish_round()

    assert fold_err.value.code is ErrorCode.NON_FINITE
    assert finish_err.value.code is ErrorCode.WRONG_STATE


def test_fedprox_asks_sites_for_the_proximal_term() -> None:
    assert build_strategy("fedprox", {"mu": 0.05}).client_training_overrides() == {"proximal_mu": 0.05}


@pytest.mark.parametrize("name", sorted(SERVER_OPTIMISERS))
def test_server_optimiser_matches_numpy_over_two_rounds_with_state(name: str, tmp_path: Path) -> None:
    options, _ = SERVER_OPTIMISERS[name]
    rng = np.random.default_rng(20)
    round1 = make_round(tmp_path / "r1", rng, layout=FLOAT32_LAYOUT, sites=3)
    start = read_float64(round1.inputs.global_path)

    # Execute round 1, then round 2 on a fresh instance (a restarted coordinator) from the persisted state
    first = run_round(build_strategy(name, options), round1)
    round2 = make_round(
        tmp_path / "r2",
        rng,
        layout=FLOAT32_LAYOUT,
        sites=2,
        round_number=2,
        global_path=first.new_tensors_path,
        state_path=first.state_path,
        state_scalars=first.state_scalars,
    )
    second = run_round(build_strategy(name, options), round2)

    means = [
        weighted_mean([read_float64(u.path) for u in files.updates], [u.num_examples for u in files.updates])
        for files in (round1, round2)
    ]
    x, reference_state = server_optimiser_rounds(name, start, means)
    result = read_float64(second.new_tensors_path)
    state = read_float64(second.state_path) if second.state_path else {}
    for key in x:
        np.testing.assert_allclose(result[key], x[key], rtol=2e-6, atol=1e-6)
        for buffer, values in reference_state[key].items():
            np.testing.assert_allclose(state[f"{buffer}.{key}"], values, rtol=2e-6, atol=1e-9)
    if name != "fedavgm":
        assert second.state_scalars["server_steps"] == 2


def test_fedavgm_without_momentum_and_unit_lr_is_fedavg(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(21), layout=FLOAT32_LAYOUT)

    plain = read_float64(run_round(build_strategy("fedavg", {}), files).new_tensors_path)
    momentum = read_float64(run_round(build_strategy("fedavgm", {"momentum": 0.0}), files).new_tensors_path)

    for key in plain:
        np.testing.assert_allclose(momentum[key], plain[key], rtol=1e-6, atol=1e-7)


def test_server_state_from_another_layout_is_rejected(tmp_path: Path) -> None:
    first = run_round(build_strategy("fedadam", {}), make_round(tmp_path / "a", np.random.default_rng(22)))
    other = make_round(
        tmp_path / "b", np.random.default_rng(22), layout=FLOAT32_LAYOUT, state_path=first.state_path
    )

    with pytest.raises(FedtuneError) as err:
        build_strategy("fedadam", {}).begin_round(other.inputs)

    assert err.value.code is ErrorCode.BAD_MANIFEST and "server state" in err.value.message
