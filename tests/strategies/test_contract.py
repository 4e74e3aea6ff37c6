"""Every registered strategy obeys the contract in coordinator/strategies/base.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies import STRATEGIES, build_strategy
from coordinator.strategies.registry import StrategyName
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.safetensors_file import read_arrays, read_header
from tests.strategies.helpers import (
    FLOAT32_LAYOUT,
    RoundFiles,
    make_round,
    make_statistics_round,
    run_round,
)

NAMES = sorted(STRATEGIES)

# one option per strategy with an out-of-range value (strategies without options use the extra-field check)
BAD_OPTION = {
    "fedprox": ("mu", -1.0),
    "fedavgm": ("momentum", 1.0),
    "fedadam": ("beta2", 1.5),
    "fedyogi": ("tau", 0.0),
    "fedadagrad": ("eta", -0.1),
    "fedavg_adaptive": ("outlier_ratio", 0.5),
    "trimmed_mean": ("trim_fraction", 0.5),
    "fedncm": ("margin", 0.0),
}


def _round(name: str, workdir: Path, rng: np.random.Generator, sites: int = 3) -> RoundFiles:
    """Updates the strategy accepts: trained weights, or class statistics for fedncm."""
    if name == "fedncm":
        return make_statistics_round(workdir, rng, sites=sites)
    return make_round(workdir, rng, sites=sites)


def test_every_shipped_name_is_registered() -> None:
    assert set(STRATEGIES) == {n.value for n in StrategyName}


@pytest.mark.parametrize("name", NAMES)
def test_builds_from_default_options(name: str) -> None:
    strategy = build_strategy(name, {})

    assert strategy.name == name
    assert isinstance(strategy.client_training_overrides(), dict)


@pytest.mark.parametrize("name", NAMES)
def test_round_keeps_manifest_layout_and_dtypes(name: str, tmp_path: Path) -> None:
    files = _round(name, tmp_path, np.random.default_rng(1))

    result = run_round(build_strategy(name, {}), files)

    manifest, _ = read_header(result.new_tensors_path)
    assert manifest.same_layout(files.inputs.manifest)
    assert result.new_tensors_path.parent == tmp_path
    assert result.metrics["num_updates"] == 3
    assert all(np.isfinite(v) for v in result.metrics.values())
    if result.state_path is not None:
        assert result.state_path.exists() and result.state_path.parent == tmp_path


@pytest.mark.parametrize("name", NAMES)
def test_begin_round_again_and_refold_gives_the_same_result(name: str, tmp_path: Path) -> None:
    files = _round(name, tmp_path / "r", np.random.default_rng(2))
    once = read_arrays(run_round(build_strategy(name, {}), files).new_tensors_path)
    restarted = build_strategy(name, {})
    restarted.begin_round(files.inputs)
    restarted.fold(files.updates[0], restarted.weight(files.updates[0], files.inputs))  # then "crash"

    again = run_round(restarted, RoundFiles(files.inputs, list(reversed(files.updates))))

    result = read_arrays(again.new_tensors_path)
    assert result.keys() == once.keys()
    for key in once:
        np.testing.assert_array_equal(result[key], once[key])


@pytest.mark.parametrize("name", NAMES)
def test_finish_without_folds_is_a_wrong_state_error(name: str, tmp_path: Path) -> None:
    files = _round(name, tmp_path, np.random.default_rng(3), sites=0)
    strategy = build_strategy(name, {})
    strategy.begin_round(files.inputs)

    with pytest.raises(FedtuneError) as err:
        strategy.finish_round()

    assert err.value.code is ErrorCode.WRONG_STATE
    assert "updates" in err.value.message


@pytest.mark.parametrize("name", NAMES)
def test_fold_before_begin_round_is_a_wrong_state_error(name: str, tmp_path: Path) -> None:
    files = _round(name, tmp_path, np.random.default_rng(4), sites=1)

    with pytest.raises(FedtuneError) as err:
        build_strategy(name, {}).fold(files.updates[0], 1.0)

    assert err.value.code is ErrorCode.WRONG_STATE


@pytest.mark.parametrize("name", NAMES)
def test_rejects_update_with_another_layout(name: str, tmp_path: Path) -> None:
    files = _round(name, tmp_path / "a", np.random.default_rng(5))
    stranger = make_round(tmp_path / "b", np.random.default_rng(5), layout=FLOAT32_LAYOUT, sites=1).updates[0]
    strategy = build_strategy(name, {})
    strategy.begin_round(files.inputs)

    with pytest.raises(FedtuneError) as err:
        strategy.fold(stranger, 1.0)

    assert err.value.code is ErrorCode.BAD_MANIFEST


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_invalid_spec_naming_the_field(name: str) -> None:
    with pytest.raises(FedtuneError) as err:
        build_strategy(name, {"no_such_option": 1})

    assert err.value.code is ErrorCode.INVALID_SPEC
    assert "strategy.options.no_such_option" in err.value.message


@pytest.mark.parametrize("name", sorted(BAD_OPTION))
def test_out_of_range_option_is_invalid_spec_naming_the_field(name: str) -> None:
    field, value = BAD_OPTION[name]

    with pytest.raises(FedtuneError) as err:
        build_strategy(name, {field: value})

    assert err.value.code is ErrorCode.INVALID_SPEC
    assert f"strategy.options.{field}:" in err.value.message


def test_unknown_strategy_lists_the_known_names() -> None:
    with pytest.raises(FedtuneError) as err:
        build_strategy("fedmagic", {})

    assert err.value.code is ErrorCode.INVALID_SPEC
    assert "fedmagic" in err.value.message and "fedavg, " in err.value.message
