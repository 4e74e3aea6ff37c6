"""fedncm: pooled class means from per-site statistics, whatever the label skew."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies import UpdateInfo, build_strategy
from fedtune.errors import ErrorCode, FedtuneError
from tests.strategies.helpers import (
    FLOAT32_LAYOUT,
    HEAD_BIAS,
    HEAD_WEIGHT,
    make_round,
    make_statistics_round,
    read_float64,
    run_round,
    write_statistics,
)

FEATURES = np.array(  # 2 examples of class 0 (site 0), 3 of class 1 and 1 of class 2 (site 1)
    [[1.0, 0, 0, 0], [3.0, 2, 0, 0], [0, 4.0, 0, 1], [0, 2.0, 0, 1], [0, 3.0, 0, 1], [0, 0, 5.0, 5]]
)
LABELS = np.array([0, 0, 1, 1, 1, 2])


def _label_skewed_round(tmp_path: Path, sites: list[list[int]]) -> tuple[object, dict[str, np.ndarray]]:
    """Sites holding the examples at the given indices; returns the round files and the global tensors."""
    files = make_statistics_round(tmp_path, np.random.default_rng(7), sites=0)
    base = read_float64(files.inputs.global_path)
    for i, indices in enumerate(sites):
        sums, counts = np.zeros((3, 4)), np.zeros(3)
        for j in indices:
            sums[LABELS[j]] += FEATURES[j]
            counts[LABELS[j]] += 1
        path = tmp_path / f"site-{i}.safetensors"
        write_statistics(path, base, sums, counts)
        files.updates.append(UpdateInfo(path, len(indices), {}, f"site-{i}"))
    return files, base


def test_head_is_the_pooled_nearest_class_mean_classifier(tmp_path: Path) -> None:
    files, base = _label_skewed_round(tmp_path, [[0, 1], [2, 3, 4, 5]])  # no site holds all classes

    result = run_round(build_strategy("fedncm", {"margin": 3.0}), files)

    new = read_float64(result.new_tensors_path)
    means = np.stack([FEATURES[LABELS == c].mean(0) for c in range(3)])
    scale = result.metrics["head_logit_scale"]
    np.testing.assert_allclose(new[HEAD_WEIGHT], scale * means, rtol=1e-6)
    np.testing.assert_allclose(new[HEAD_BIAS], -0.5 * scale * (means**2).sum(1), rtol=1e-6)
    points = np.random.default_rng(0).standard_normal((200, 4)) * 3
    logits = points @ new[HEAD_WEIGHT].T + new[HEAD_BIAS]
    distances = ((points[:, None, :] - means[None]) ** 2).sum(-1)
    assert (logits.argmax(1) == distances.argmin(1)).all()
    at_means = means @ new[HEAD_WEIGHT].T + new[HEAD_BIAS]
    gaps = [at_means[c, c] - np.delete(at_means[c], c).max() for c in range(3)]
    assert min(gaps) == pytest.approx(3.0, rel=1e-5)
    assert result.metrics["head_classes_present"] == 3 and result.metrics["head_examples"] == 6


def test_does_not_depend_on_how_examples_are_dealt_to_sites(tmp_path: Path) -> None:
    skewed, _ = _label_skewed_round(tmp_path / "a", [[0, 1], [2, 3, 4, 5]])
    mixed, _ = _label_skewed_round(tmp_path / "b", [[0, 2, 5], [1, 3], [4]])

    a = read_float64(run_round(build_strategy("fedncm", {}), skewed).new_tensors_path)
    b = read_float64(run_round(build_strategy("fedncm", {}), mixed).new_tensors_path)

    for name in (HEAD_WEIGHT, HEAD_BIAS):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6)


def test_every_other_tensor_keeps_the_global_bits(tmp_path: Path) -> None:
    files = make_statistics_round(tmp_path, np.random.default_rng(8))
    before = read_float64(files.inputs.global_path)

    after = read_float64(run_round(build_strategy("fedncm", {}), files).new_tensors_path)

    for name in set(before) - {HEAD_WEIGHT, HEAD_BIAS}:
        np.testing.assert_array_equal(after[name], before[name])


def test_a_class_no_site_holds_keeps_its_global_row(tmp_path: Path) -> None:
    files, base = _label_skewed_round(tmp_path, [[0, 1], [2, 3]])  # nobody has class 2

    result = run_round(build_strategy("fedncm", {}), files)

    new = read_float64(result.new_tensors_path)
    np.testing.assert_array_equal(new[HEAD_WEIGHT][2], base[HEAD_WEIGHT][2])
    assert result.metrics["head_classes_missing"] == 1


def test_a_single_class_cannot_make_a_classifier(tmp_path: Path) -> None:
    files, _ = _label_skewed_round(tmp_path, [[0], [1]])
    strategy = build_strategy("fedncm", {})
    strategy.begin_round(files.inputs)
    for update in files.updates:
        strategy.fold(update, 1.0)

    with pytest.raises(FedtuneError) as err:
        strategy.finish_round()

    assert err.value.code is ErrorCode.WRONG_STATE and "at least two" in err.value.message


@pytest.mark.parametrize(
    ("counts", "code"),
    [
        ([1.0, -2.0, 0.0], ErrorCode.INVALID_ARGUMENT),
        ([1.5, 0, 0], ErrorCode.INVALID_ARGUMENT),
        ([np.nan, 1, 1], ErrorCode.NON_FINITE),
    ],
    ids=["negative", "fractional", "nan"],
)
def test_bias_that_is_not_class_counts_is_refused(
    tmp_path: Path, counts: list[float], code: ErrorCode
) -> None:
    files = make_statistics_round(tmp_path, np.random.default_rng(9), sites=0)
    bad = tmp_path / "bad.safetensors"
    write_statistics(bad, read_float64(files.inputs.global_path), np.ones((3, 4)), np.array(counts))
    strategy = build_strategy("fedncm", {})
    strategy.begin_round(files.inputs)

    with pytest.raises(FedtuneError) as err:
        strategy.fold(UpdateInfo(bad, 3, {}, "site-x"), 3.0)

    assert err.value.code is code and "site-x" in err.value.message


def test_a_version_without_the_head_is_invalid_spec_naming_the_option(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(10), layout=FLOAT32_LAYOUT, sites=1)

    with pytest.raises(FedtuneError) as err:
        build_strategy("fedncm", {"head": "classifier"}).begin_round(files.inputs)

    assert err.value.code is ErrorCode.INVALID_SPEC and "strategy.options.head" in err.value.message


def test_asks_sites_for_statistics_of_the_configured_head() -> None:
    strategy = build_strategy("fedncm", {"head": "classifier.out_proj"})

    assert strategy.client_training_overrides() == {"class_statistics": "classifier.out_proj"}
