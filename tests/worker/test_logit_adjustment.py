"""Logit-adjusted local training (label-skew fix): the loss formula, and its effect on a one-class site."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.tiny import CUE_WORDS, FILLER_WORDS, make_classification_data, tiny_spec
from tests.worker.helpers import quiet, write_global
from worker.data import Example
from worker.logit_adjustment import adjusted_cross_entropy, site_log_prior


def _reference_loss(logits: np.ndarray, labels: np.ndarray, prior: np.ndarray, tau: float) -> float:
    """Mean of -log softmax(logits + tau * log prior)[y], in float64 numpy."""
    shifted = logits.astype(np.float64) + tau * np.log(prior)
    shifted -= shifted.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def test_site_prior_is_laplace_smoothed_over_all_classes() -> None:
    # Prepare: 3 examples of class 0, 1 of class 2, none of class 1 or 3
    labels = [0, 0, 0, 2]
    # Execute
    log_prior = site_log_prior(labels, num_classes=4)
    # Assert: (counts + 1) / (n + K), an absent class gets 1/8, not 0
    np.testing.assert_allclose(log_prior.exp().numpy(), [4 / 8, 1 / 8, 2 / 8, 1 / 8], rtol=1e-6)
    assert torch.isfinite(log_prior).all()


def test_site_prior_rejects_labels_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="labels must lie in"):
        site_log_prior([0, 3], num_classes=3)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_adjusted_cross_entropy_matches_a_numpy_reference(tau: float) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 0, 1])
    prior = np.array([0.7, 0.2, 0.1])
    # Execute
    loss = adjusted_cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), torch.log(torch.from_numpy(prior)).float(), tau
    )
    # Assert
    assert float(loss) == pytest.approx(_reference_loss(logits, labels, prior, tau), rel=1e-5)


def _examples(counts: list[int]) -> list[Example]:
    rng = np.random.default_rng(3)
    out = []
    for label, count in enumerate(counts):
        for _ in range(count):
            words = list(rng.choice(FILLER_WORDS, 4)) + list(rng.choice(CUE_WORDS[label], 2))
            out.append(Example(" ".join(words), label))
    return out


def _no_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


PEFTS = [
    {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
    {"method": "prompt_tuning", "num_virtual_tokens": 4},
    {"method": "ia3"},
]


@pytest.mark.slow
@pytest.mark.parametrize("peft", PEFTS, ids=lambda p: p["method"])
@pytest.mark.parametrize("proximal_mu", [0.0, 0.1], ids=["plain", "fedprox"])
def test_training_loss_is_the_adjusted_cross_entropy(
    model_root: Path, peft: dict, proximal_mu: float
) -> None:
    """Step 1's loss (before any update) on one batch holding the whole site equals the hand computation."""
    from tests.worker.helpers import build_model
    from worker.batches import encode_batch
    from worker.device import select_device
    from worker.training import train

    # Prepare: 9 sport + 3 business; one batch of all 12 (mean CE does not depend on the order)
    tau = 1.0
    examples = _examples([9, 3])
    training = {"max_steps": 1, "batch_size": 12, "max_length": 32, "logit_adjustment": tau}
    spec = tiny_spec(peft=peft, training={**training, "proximal_mu": proximal_mu})
    device = select_device("cpu")
    built = build_model(spec, model_root, device=device)
    _no_dropout(built.model)
    with torch.no_grad():
        batch = encode_batch(built.tokenizer, examples, spec.task, 32, device.device)
        logits = built.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.numpy()
    prior = np.array([9 + 1, 3 + 1]) / (12 + 2)
    # Execute
    result = train(
        built.model,
        built.tokenizer,
        examples,
        task=spec.task,
        training=spec.training,
        device=device,
        progress=quiet,
    )
    # Assert
    expected = _reference_loss(logits, batch["labels"].numpy(), prior, tau)
    assert result.train_loss == pytest.approx(expected, rel=1e-4)
    assert not math.isclose(expected, _reference_loss(logits, batch["labels"].numpy(), prior, 0.0))


def _prior_margin_shift(model_root: Path, data: Path, tmp_path: Path, tau: float) -> float:
    """How far local training moves the head's bias margin (majority minus minority class)."""
    from worker.tasks import run_init, run_train

    steps = {"max_steps": 60, "batch_size": 8, "learning_rate": 2e-2, "max_length": 32}
    spec = tiny_spec(training={**steps, "logit_adjustment": tau})
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / f"global-{tau}.safetensors", init.arrays)
    trained = run_train(spec, 0, 1, global_path, data, model_root, site="a", progress=quiet).arrays
    (bias,) = [n for n in trained if "classifier" in n and n.endswith("bias")]
    shift = trained[bias] - init.arrays[bias]
    return float(shift[0] - shift[1])


@pytest.mark.slow
def test_skewed_site_keeps_the_head_prior_near_the_global_model(model_root: Path, tmp_path: Path) -> None:
    """A 90/10 site: plain CE learns the site's prior into the head's bias; tau=1 leaves it near global.

    (A site holding a single class is no test under AdamW: adjusted CE then has plain CE's gradient
    direction at a smaller scale, which Adam's normalisation undoes; the prior offset acts through the
    balance between classes.)
    """
    # Prepare
    data = tmp_path / "skewed"
    make_classification_data(data, ["sport", "business"], n_train=64, n_eval=8, seed=2, label_skew=[0.9, 0.1])
    # Execute
    plain = _prior_margin_shift(model_root, data, tmp_path, tau=0.0)
    adjusted = _prior_margin_shift(model_root, data, tmp_path, tau=1.0)
    # Assert
    assert plain > 0.2
    assert abs(adjusted) < 0.25 * plain
