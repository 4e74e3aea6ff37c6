"""The global stage on a site: LM LoRA training on unlabelled text, and finetune models on the merged base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from fedtune.spec import ExperimentSpec
from tests.fixtures.tiny import tiny_spec
from tests.worker.helpers import build_model
from worker.batches import encode_batch
from worker.data import Example
from worker.device import select_device
from worker.lm import encode_lm_batch, mask_tokens
from worker.model_factory import ModelFactory
from worker.tasks import run_init, run_train

CPU = select_device("cpu")


def _spec(max_steps: int = 30) -> ExperimentSpec:
    return tiny_spec(
        training={
            "max_steps": max_steps,
            "batch_size": 8,
            "learning_rate": 2e-2,
            "max_length": 32,
            "seed": 0,
        },
        stages=[{"kind": "global", "rounds": 1}, {"kind": "finetune", "rounds": 1}],
    )


def test_masking_is_seeded_and_never_picks_special_tokens() -> None:
    # Prepare
    ids = torch.arange(200).reshape(4, 50) + 10
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True

    class Tok:
        mask_token_id = 4

        def __len__(self) -> int:
            return 300

    # Execute
    first = mask_tokens(ids, special, Tok(), torch.Generator().manual_seed(3))
    second = mask_tokens(ids, special, Tok(), torch.Generator().manual_seed(3))

    # Assert
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    picked = first[1] != -100
    assert not picked[:, 0].any() and 0.05 < float(picked.float().mean()) < 0.3
    assert (first[0][picked] == 4).float().mean() > 0.5


def test_global_init_builds_identical_lm_lora_on_every_build(model_root: Path) -> None:
    # Execute
    one = run_init(_spec(), model_root, device="cpu", stage_index=0)
    two = run_init(_spec(), model_root, device="cpu", stage_index=0)  # no factory: built again

    # Assert
    assert one.arrays and any("lora_B" in name for name in one.arrays)
    assert sorted(one.arrays) == sorted(two.arrays)
    assert all(np.array_equal(one.arrays[k], two.arrays[k]) for k in one.arrays)
    assert b"LORA" in one.files["adapter_config.json"]


@pytest.mark.slow
def test_global_training_lowers_the_masked_lm_loss_on_site_text(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    # Prepare
    spec = _spec(max_steps=40)
    init = run_init(spec, model_root, device="cpu", stage_index=0)
    global_path = tmp_path / "v0.safetensors"
    save_file(init.arrays, str(global_path))

    # Execute
    out = run_train(
        spec, 0, 1, global_path, cls_data, model_root, site="a", progress=lambda _: None, device="cpu"
    )

    # Assert
    assert out.metrics["eval_mlm_loss"] < out.metrics["base_eval_mlm_loss"] - 0.1
    assert set(out.arrays) == set(init.arrays) and out.num_examples == 200
    assert any(not np.array_equal(out.arrays[k], init.arrays[k]) for k in out.arrays)


def test_lm_batches_score_only_masked_tokens(model_root: Path) -> None:
    # Prepare
    built, kind = ModelFactory().lm_model(_spec(), model_root, CPU)
    examples = [Example("the goal match league coach score", None)] * 4

    # Execute
    batch = encode_lm_batch(built.tokenizer, examples, kind, 32, CPU.device, torch.Generator().manual_seed(0))

    # Assert
    assert kind == "masked"
    scored = batch["labels"] != -100
    assert scored.any() and not scored[:, 0].any()  # [CLS] is never picked
    assert built.model(**batch).loss.isfinite()


def _trained_global(model_root: Path, tmp_path: Path) -> Path:
    """A global-stage version with clearly non-zero LoRA tensors (as if trained)."""
    init = run_init(_spec(), model_root, device="cpu", stage_index=0)
    rng = np.random.default_rng(0)
    arrays = {k: (v + rng.normal(0, 0.5, v.shape)).astype(np.float32) for k, v in init.arrays.items()}
    path = tmp_path / "global.safetensors"
    save_file(arrays, str(path))
    return path


def _logits(model: torch.nn.Module, tokenizer: object) -> torch.Tensor:
    batch = encode_batch(
        tokenizer, [Example("the goal and the bank", 0)], "sequence-classification", 32, CPU.device
    )
    with torch.no_grad():
        return model(**batch).logits


def test_build_model_on_a_global_base_changes_logits_and_is_reproducible(
    model_root: Path, tmp_path: Path
) -> None:
    # Prepare
    spec = _spec()
    base_adapter = _trained_global(model_root, tmp_path)
    plain = build_model(spec, model_root, device=CPU)

    # Execute
    merged_one = build_model(spec, model_root, device=CPU, base_adapter_path=base_adapter)
    merged_two = build_model(spec, model_root, device=CPU, base_adapter_path=base_adapter)  # another factory

    # Assert
    without = _logits(plain.model, plain.tokenizer)
    one = _logits(merged_one.model, merged_one.tokenizer)
    two = _logits(merged_two.model, merged_two.tokenizer)
    assert not torch.allclose(without, one, atol=1e-5)
    assert torch.equal(one, two)


def test_an_untrained_global_version_leaves_the_base_unchanged(model_root: Path, tmp_path: Path) -> None:
    # Prepare: lora_B starts at zero, so merging the INIT version is a no-op on the base weights
    spec = _spec()
    init = run_init(spec, model_root, device="cpu", stage_index=0)
    path = tmp_path / "v0.safetensors"
    save_file(init.arrays, str(path))
    plain = build_model(spec, model_root, device=CPU)

    # Execute
    merged = build_model(spec, model_root, device=CPU, base_adapter_path=path)

    # Assert
    torch.testing.assert_close(
        _logits(merged.model, merged.tokenizer), _logits(plain.model, plain.tokenizer), rtol=0, atol=1e-6
    )
