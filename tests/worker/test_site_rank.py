"""A site training a lower LoRA rank than the global adapter (docs/decisions.md 37), on a real tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.lora_ranks import lora_pairs
from tests.fixtures.tiny import tiny_spec
from tests.worker.helpers import build_model, quiet, write_global
from worker.model import frozen_arrays, load_trainable_arrays
from worker.site_rank import site_lora
from worker.tasks import run_init, run_personalize, run_train

HETERO: dict[str, Any] = {
    "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "site_ranks": {"small": 2}},
    "stages": [{"kind": "finetune", "rounds": 2, "strategy": {"name": "hetero_lora"}}],
}


def global_with_live_b(arrays: dict[str, np.ndarray], live: int, seed: int) -> dict[str, np.ndarray]:
    """The init adapter with random B in its first `live` components and zero in the rest."""
    rng = np.random.default_rng(seed)
    out = dict(arrays)
    for _, b_name in lora_pairs(arrays):
        b = np.zeros_like(arrays[b_name])
        b[:, :live] = 0.5 * rng.standard_normal((b.shape[0], live))
        out[b_name] = b.astype(np.float32)
    return out


def logits(model: Any) -> torch.Tensor:
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    with torch.no_grad():
        return model(input_ids=ids).logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("use_rslora", [False, True])
def test_a_lower_rank_site_computes_what_the_global_adapter_computes_with_its_top_components(
    model_root: Path, use_rslora: bool
) -> None:
    # Prepare: a rank-4 global whose components 3 and 4 are zero
    peft = {**HETERO["peft"], "use_rslora": use_rslora}
    spec = tiny_spec(**{**HETERO, "peft": peft})
    arrays = global_with_live_b(run_init(spec, model_root).arrays, live=2, seed=1)
    full = build_model(spec, model_root).model
    load_trainable_arrays(full, arrays)
    # Execute: the rank-2 site's model from the sliced global
    lora = site_lora(spec, 0, "small", None)
    small = build_model(lora.spec, model_root).model
    load_trainable_arrays(small, lora.slice(arrays))
    # Assert: same function (the site's alpha keeps the global scale), at half the adapter size
    assert lora.rank == 2 and lora.spec.peft.r == 2  # type: ignore[union-attr]
    torch.testing.assert_close(logits(small), logits(full))
    assert not torch.allclose(logits(full), logits(build_model(spec, model_root).model))  # B matters


def test_a_lower_rank_site_trains_its_top_components_and_sends_the_rest_as_it_came(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    # Prepare
    spec = tiny_spec(**HETERO, training={"max_steps": 5, "batch_size": 8, "learning_rate": 1e-2})
    arrays = global_with_live_b(run_init(spec, model_root).arrays, live=4, seed=2)
    global_path = write_global(tmp_path / "global.safetensors", arrays)
    # Execute
    out = run_train(spec, 0, 1, global_path, cls_data, model_root, site="small", progress=quiet)
    # Assert: the global layout; components 1-2 trained, 3-4 exactly the global's
    assert {n: a.shape for n, a in out.arrays.items()} == {n: a.shape for n, a in arrays.items()}
    assert out.metrics["lora_rank"] == 2.0
    pairs = lora_pairs(arrays)
    assert pairs
    for a_name, b_name in pairs:
        np.testing.assert_array_equal(out.arrays[a_name][2:], arrays[a_name][2:])
        np.testing.assert_array_equal(out.arrays[b_name][:, 2:], arrays[b_name][:, 2:])
        assert not np.allclose(out.arrays[a_name][:2], arrays[a_name][:2])
        assert not np.allclose(out.arrays[b_name][:, :2], arrays[b_name][:, :2])
    # a full-rank site of the same experiment sends rank-4 factors
    full = run_train(spec, 0, 1, global_path, cls_data, model_root, site="big", progress=quiet)
    assert full.metrics["lora_rank"] == 4.0
    assert all(not np.allclose(full.arrays[b][:, 2:], arrays[b][:, 2:]) for _, b in pairs)


def test_max_lora_rank_caps_the_site_and_needs_a_rank_aware_strategy(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    hetero = tiny_spec(**HETERO)
    assert site_lora(hetero, 0, "big", max_rank=3).rank == 3  # not listed: r, capped
    assert site_lora(hetero, 0, "small", max_rank=3).rank == 2  # listed lower than the cap
    assert site_lora(hetero, 0, "big", max_rank=8).rank is None  # the cap is above r: nothing to do
    plain = tiny_spec()  # fedavg averages factors: a capped site cannot take part
    global_path = write_global(tmp_path / "global.safetensors", run_init(plain, model_root).arrays)
    with pytest.raises(FedtuneError) as caught:
        run_train(plain, 0, 1, global_path, cls_data, model_root, site="x", progress=quiet, max_lora_rank=2)
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert "--max-lora-rank" in caught.value.message and "hetero_lora" in caught.value.message


def test_ffa_lora_sites_of_lower_rank_draw_the_top_rows_of_the_shared_frozen_a(model_root: Path) -> None:
    peft = {**HETERO["peft"], "freeze_a": True}
    spec = tiny_spec(peft=peft)  # freeze_a: plain fedavg of the padded B is exact
    full_a = frozen_arrays(build_model(spec, model_root).model)

    lora = site_lora(spec, 0, "small", None)
    small_a = frozen_arrays(build_model(lora.spec, model_root).model)

    assert full_a.keys() == small_a.keys() and full_a
    for name, a in full_a.items():
        np.testing.assert_array_equal(small_a[name], a[:2])


def test_a_lower_rank_site_personalizes_its_top_components_and_keeps_that_adapter(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(**HETERO, training={"max_steps": 3, "batch_size": 8, "learning_rate": 1e-2})
    arrays = global_with_live_b(run_init(spec, model_root).arrays, live=4, seed=3)
    global_path = write_global(tmp_path / "global.safetensors", arrays)

    out = run_personalize(
        spec, 0, global_path, cls_data, model_root, out_dir=tmp_path / "mine", site="small", progress=quiet
    )

    assert out.metrics["lora_rank"] == 2.0 and "personal_eval_accuracy" in out.metrics
    saved = json.loads((tmp_path / "mine" / "adapter_config.json").read_text())
    assert saved["r"] == 2 and saved["lora_alpha"] == 4.0  # alpha 8 at r 4: the same scale at r 2
