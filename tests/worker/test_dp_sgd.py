"""Record-level DP: DP-SGD with Opacus through the train task on a tiny BERT + LoRA (worker/dp_sgd.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.privacy_accounting import dp_epsilon
from tests.fixtures.tiny import tiny_spec
from tests.worker.helpers import evaluate_version, quiet, write_global
from worker.device import resolve_device
from worker.model_factory import ModelFactory
from worker.tasks import run_init, run_train

pytestmark = pytest.mark.slow


def _dp(z: float = 0.5, **training: object):  # type: ignore[no-untyped-def]
    steps = {
        "max_steps": 40,
        "batch_size": 16,
        "learning_rate": 2e-2,
        "max_length": 32,
        "seed": 0,
        **training,
    }
    return tiny_spec(
        training=steps,
        privacy={"dp": {"level": "record", "noise_multiplier": z, "clip_norm": 1.0, "delta": 1e-5}},
    )


def _global(spec, model_root: Path, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    out = run_init(spec, model_root)
    return write_global(tmp_path / "global.safetensors", out.arrays), out.arrays


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[n] - b[n]) ** 2) for n in a)))


def test_dp_sgd_trains_and_reports_its_epsilon(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    # Prepare
    spec = _dp(z=0.5)
    global_path, global_arrays = _global(spec, model_root, tmp_path)
    before = evaluate_version(spec, global_path, cls_data, model_root)
    models = ModelFactory()

    # Execute
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, models=models, site="a", progress=quiet)

    # Assert: the accounting figures of 40 Poisson steps at q = 16/200, and the model learnt
    m = out.metrics
    assert m["dp_noise_multiplier"] == 0.5 and m["dp_sample_rate"] == pytest.approx(16 / 200)
    assert m["dp_steps"] == 40 and m["dp_epsilon"] == pytest.approx(dp_epsilon(0.5, 16 / 200, 40, 1e-5))
    assert set(out.arrays) == set(global_arrays) and all(np.isfinite(a).all() for a in out.arrays.values())
    assert m["eval_loss"] < before["eval_loss"] and m["eval_accuracy"] > before["eval_accuracy"]
    assert "update_norm" not in m

    # the model the factory keeps has no Opacus hooks or per-sample gradients left
    built = models.model(spec, model_root, resolve_device(None))
    assert not any(hasattr(p, "grad_sample") for p in built.model.parameters())
    assert not any(module._forward_hooks for module in built.model.modules())


def test_more_noise_spends_less_epsilon(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    spec_low, spec_high = _dp(z=0.5, max_steps=5), _dp(z=2.0, max_steps=5)
    global_path, _ = _global(spec_low, model_root, tmp_path)
    low = run_train(spec_low, 0, 1, global_path, cls_data, model_root, progress=quiet).metrics["dp_epsilon"]
    high = run_train(spec_high, 0, 1, global_path, cls_data, model_root, progress=quiet).metrics["dp_epsilon"]
    assert high < low


def test_empty_poisson_samples_take_a_noise_only_step(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    # q = 1/200: about a third of the 30 steps sample no record at all
    spec = _dp(z=1.0, batch_size=1, max_steps=30)
    global_path, global_arrays = _global(spec, model_root, tmp_path)
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, progress=quiet)
    assert out.metrics["dp_steps"] == 30 and out.metrics["dp_sample_rate"] == pytest.approx(1 / 200)
    assert _distance(out.arrays, global_arrays) > 0


def test_fedprox_keeps_working_under_dp_sgd(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    # The proximal gradient is added after the noise: a strong mu holds the weights near the global
    free, held = _dp(z=0.1, max_steps=30), _dp(z=0.1, max_steps=30, proximal_mu=1000.0)
    global_path, global_arrays = _global(free, model_root, tmp_path)
    drift_free = _distance(
        run_train(free, 0, 1, global_path, cls_data, model_root, progress=quiet).arrays, global_arrays
    )
    drift_held = _distance(
        run_train(held, 0, 1, global_path, cls_data, model_root, progress=quiet).arrays, global_arrays
    )
    assert drift_held < 0.5 * drift_free


def test_a_site_refuses_a_round_that_alone_would_pass_the_budget(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    dp = {"level": "record", "noise_multiplier": 0.5, "clip_norm": 1.0, "target_epsilon": 1.0}
    spec = tiny_spec(  # 40 steps at q = 0.08 and z = 0.5 spend far more than 1
        training={"max_steps": 40, "batch_size": 16, "max_length": 32}, privacy={"dp": dp}
    )
    global_path, _ = _global(spec, model_root, tmp_path)
    with pytest.raises(FedtuneError) as caught:
        run_train(spec, 0, 1, global_path, cls_data, model_root, progress=quiet)
    assert caught.value.code is ErrorCode.INVALID_SPEC
    assert "privacy.dp.target_epsilon 1.0: one round here (40 DP-SGD steps" in caught.value.message
