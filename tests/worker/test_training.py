"""Local training through the task entry points, on tiny models (each test well under a second)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.tiny import tiny_spec
from tests.worker.helpers import build_model, evaluate_version, quiet, write_global
from worker.tasks import run_init, run_personalize, run_train

pytestmark = pytest.mark.slow

FFA = {"method": "lora", "r": 4, "freeze_a": True}
PROMPT = {"method": "prompt_tuning", "num_virtual_tokens": 4}


def _init_global(spec, model_root: Path, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    out = run_init(spec, model_root)
    return write_global(tmp_path / "global.safetensors", out.arrays), out.arrays


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[n] - b[n]) ** 2) for n in a)))


@pytest.mark.parametrize("peft", [None, FFA, {"method": "ia3"}], ids=["lora", "ffa-lora", "ia3"])
def test_train_learns_the_tiny_task(
    model_root: Path, cls_data: Path, tmp_path: Path, peft: dict | None
) -> None:
    # Prepare
    spec = tiny_spec(peft=peft) if peft else tiny_spec()
    global_path, global_arrays = _init_global(spec, model_root, tmp_path)
    before = evaluate_version(spec, global_path, cls_data, model_root)
    # Execute
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, site="a", progress=quiet)
    # Assert
    assert out.num_examples == 200 and set(out.arrays) == set(global_arrays)
    assert out.metrics["eval_loss"] < before["eval_loss"]
    assert out.metrics["eval_accuracy"] >= 0.75 > before["eval_accuracy"]


def test_prompt_tuning_trains_on_tiny_bert(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    spec = tiny_spec(peft=PROMPT)
    global_path, global_arrays = _init_global(spec, model_root, tmp_path)
    before = evaluate_version(spec, global_path, cls_data, model_root)
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, site="a", progress=quiet)
    assert out.metrics["eval_loss"] < before["eval_loss"]
    assert not np.array_equal(out.arrays["prompt_embeddings"], global_arrays["prompt_embeddings"])


def test_training_is_reproducible_and_depends_on_site(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(training={"max_steps": 5, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32})
    global_path, _ = _init_global(spec, model_root, tmp_path)
    a1 = run_train(spec, 0, 1, global_path, cls_data, model_root, site="a", progress=quiet).arrays
    a2 = run_train(spec, 0, 1, global_path, cls_data, model_root, site="a", progress=quiet).arrays
    b = run_train(spec, 0, 1, global_path, cls_data, model_root, site="b", progress=quiet).arrays
    assert _distance(a1, a2) == 0.0
    assert _distance(a1, b) > 0.0


def test_ffa_lora_keeps_a_at_init(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    from worker.model import frozen_arrays

    spec = tiny_spec(peft=FFA, training={"max_steps": 5, "batch_size": 8, "learning_rate": 1e-2})
    global_path, _ = _init_global(spec, model_root, tmp_path)
    frozen_before = frozen_arrays(build_model(spec, model_root).model)
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, site="a", progress=quiet)
    built = build_model(spec, model_root)  # an independent rebuild, as at another site
    assert not any("lora_A" in n for n in out.arrays)
    assert frozen_before and frozen_before.keys() == frozen_arrays(built.model).keys()
    for name, value in frozen_before.items():
        np.testing.assert_array_equal(value, frozen_arrays(built.model)[name])


def test_fedprox_with_huge_mu_stays_near_global(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    steps = {"max_steps": 10, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32}
    plain, prox = tiny_spec(training=steps), tiny_spec(training={**steps, "proximal_mu": 1e4})
    global_path, global_arrays = _init_global(plain, model_root, tmp_path)
    free = run_train(plain, 0, 1, global_path, cls_data, model_root, progress=quiet).arrays
    held = run_train(prox, 0, 1, global_path, cls_data, model_root, progress=quiet).arrays
    assert _distance(held, global_arrays) < 0.2 * _distance(free, global_arrays)


def test_dp_clips_the_update_norm(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    steps = {"max_steps": 10, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32}
    spec = tiny_spec(training=steps, privacy={"clip_norm": 0.01, "noise_multiplier": 0.0})
    global_path, global_arrays = _init_global(spec, model_root, tmp_path)
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, progress=quiet)
    assert out.metrics["update_clipped"] == 1.0 and out.metrics["update_norm"] > 0.01
    assert _distance(out.arrays, global_arrays) == pytest.approx(0.01, rel=1e-3)


def test_progress_is_reported(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    spec = tiny_spec(training={"max_steps": 20, "batch_size": 4, "max_length": 32})
    global_path, _ = _init_global(spec, model_root, tmp_path)
    lines: list[str] = []
    run_train(spec, 0, 1, global_path, cls_data, model_root, progress=lines.append)
    assert len(lines) == 2 and lines[-1].startswith("step 20/20 loss ") and "examples/s" in lines[-1]


def test_causal_lm_lora_lowers_loss(model_root: Path, lm_data: Path, tmp_path: Path) -> None:
    spec = tiny_spec(task="causal-lm", labels=None, base_model={"name": "tiny-llama"})
    global_path, _ = _init_global(spec, model_root, tmp_path)
    before = evaluate_version(spec, global_path, lm_data, model_root)
    out = run_train(spec, 0, 1, global_path, lm_data, model_root, progress=quiet)
    assert out.metrics["eval_loss"] < before["eval_loss"] - 0.2
    assert out.metrics["eval_perplexity"] < before["eval_perplexity"]


def test_causal_lm_prefix_tuning_runs(model_root: Path, lm_data: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        task="causal-lm",
        labels=None,
        base_model={"name": "tiny-llama"},
        peft={"method": "prefix_tuning", "num_virtual_tokens": 4},
    )
    global_path, _ = _init_global(spec, model_root, tmp_path)
    before = evaluate_version(spec, global_path, lm_data, model_root)
    out = run_train(spec, 0, 1, global_path, lm_data, model_root, progress=quiet)
    assert set(out.arrays) == {"prompt_embeddings"}
    assert out.metrics["eval_loss"] < before["eval_loss"]


def test_personalize_saves_adapter_and_reports_both(model_root: Path, cls_data: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    spec = tiny_spec(peft=FFA, stages=[{"kind": "personalize"}])
    global_path, _ = _init_global(spec, model_root, tmp_path)
    out = run_personalize(
        spec, 0, global_path, cls_data, model_root, out_dir=tmp_path / "mine", progress=quiet
    )
    assert out.metrics["personal_eval_accuracy"] > out.metrics["global_eval_accuracy"]
    base = AutoModelForSequenceClassification.from_pretrained(model_root / "tiny-bert", num_labels=2)
    assert isinstance(PeftModel.from_pretrained(base, str(tmp_path / "mine")), PeftModel)


def test_dp_with_noise_reports_no_unnoised_update_figures() -> None:
    from fedtune.spec import PrivacySpec
    from worker.training import privatize_update

    rng = np.random.default_rng(5)
    global_arrays = {"w": np.zeros((64,), dtype=np.float64)}
    trained = {"w": np.full((64,), 0.5, dtype=np.float32)}  # norm 4: clipped to 1

    clipped, clip_metrics = privatize_update(trained, global_arrays, PrivacySpec(clip_norm=1.0), rng)
    noisy, noise_metrics = privatize_update(
        trained, global_arrays, PrivacySpec(clip_norm=1.0, noise_multiplier=1.0), rng
    )

    assert clip_metrics == {"update_norm": pytest.approx(4.0), "update_clipped": 1.0}
    assert np.linalg.norm(clipped["w"]) == pytest.approx(1.0, rel=1e-6)
    assert noise_metrics == {}
    assert np.linalg.norm(noisy["w"] - clipped["w"]) > 1.0  # 64 draws of N(0, 1): norm ~8


def test_dp_eval_metrics_measure_the_noised_update_that_is_sent(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    steps = {"max_steps": 10, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32}
    plain = tiny_spec(training=steps)
    noised = tiny_spec(training=steps, privacy={"clip_norm": 1.0, "noise_multiplier": 50.0})
    global_path, global_arrays = _init_global(plain, model_root, tmp_path)

    clean = run_train(plain, 0, 1, global_path, cls_data, model_root, progress=quiet)
    sent = run_train(noised, 0, 1, global_path, cls_data, model_root, progress=quiet)

    assert _distance(sent.arrays, global_arrays) > 100  # the noise, not the training, moved it
    assert sent.metrics["eval_loss"] > 2 * clean.metrics["eval_loss"]
    assert "update_norm" not in sent.metrics
