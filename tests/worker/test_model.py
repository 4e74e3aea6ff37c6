"""Building the adapter, exchanging its tensors, and exporting it for peft."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.numpy import save_file
from transformers import AutoModelForSequenceClassification

from fedtune.errors import ErrorCode, FedtuneError
from tests.fixtures.tiny import tiny_spec
from tests.worker.helpers import build_model
from worker.methods import registry, spec_method_names
from worker.model import load_trainable_arrays, trainable_arrays
from worker.model_factory import ModelFactory
from worker.tasks import FROZEN_ADAPTER_FILE, run_init

SEQ_CLS_METHODS = [
    {"method": "lora", "r": 4},
    {"method": "lora", "r": 4, "freeze_a": True},
    {"method": "prompt_tuning", "num_virtual_tokens": 4},
    {"method": "ia3"},
]


def test_registry_covers_exactly_the_spec_methods() -> None:
    assert set(registry()) == spec_method_names() == {"lora", "prompt_tuning", "prefix_tuning", "ia3"}


@pytest.mark.parametrize("peft", SEQ_CLS_METHODS, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_exchanged_tensors_are_the_trainable_peft_tensors(model_root: Path, peft: dict) -> None:
    # Prepare
    built = build_model(tiny_spec(peft=peft), model_root)
    # Execute
    arrays = trainable_arrays(built.model)
    # Assert: names are peft save names, every trainable parameter is covered exactly once
    assert set(arrays) <= set(get_peft_model_state_dict(built.model))
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert sum(a.size for a in arrays.values()) == trainable
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert any("classifier" in name for name in arrays)


def test_init_is_identical_across_builds(model_root: Path) -> None:
    first = run_init(tiny_spec(), model_root)
    second = run_init(tiny_spec(), model_root)  # without a factory: built again from disk
    assert first.arrays.keys() == second.arrays.keys()
    for name in first.arrays:
        np.testing.assert_array_equal(first.arrays[name], second.arrays[name])
    assert first.files["adapter_config.json"] == second.files["adapter_config.json"]


def test_init_differs_with_the_seed(model_root: Path) -> None:
    a = run_init(tiny_spec(seed=0), model_root).arrays
    b = run_init(tiny_spec(seed=1), model_root).arrays
    assert any(not np.array_equal(a[n], b[n]) for n in a)


def test_cached_model_is_reset_to_init(model_root: Path) -> None:
    spec, models = tiny_spec(), ModelFactory()
    built = build_model(spec, model_root, models=models)
    init = trainable_arrays(built.model)
    load_trainable_arrays(built.model, {n: a + 1.0 for n, a in init.items()})
    kept = build_model(spec, model_root, models=models)
    again = trainable_arrays(kept.model)
    assert kept is built  # the factory kept it: no second load from disk
    for name in init:
        np.testing.assert_array_equal(init[name], again[name])


def test_factory_keeps_one_model_and_factories_are_independent(model_root: Path) -> None:
    # Prepare
    models, other = ModelFactory(), ModelFactory()
    first = build_model(tiny_spec(seed=0), model_root, models=models)

    # Execute
    second = build_model(tiny_spec(seed=1), model_root, models=models)  # another experiment
    elsewhere = build_model(tiny_spec(seed=1), model_root, models=other)

    # Assert: a new key replaces the kept model (memory stays bounded); another factory builds its own
    assert second is not first and models.task_models.value is second
    assert elsewhere is not second
    models.clear()
    assert models.task_models.value is None


@pytest.mark.parametrize("peft", SEQ_CLS_METHODS, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_init_exports_as_a_peft_adapter(model_root: Path, tmp_path: Path, peft: dict) -> None:
    # Prepare
    spec = tiny_spec(peft=peft)
    out = run_init(spec, model_root)
    arrays = dict(out.arrays)
    if FROZEN_ADAPTER_FILE in out.files:  # FFA-LoRA: the frozen A travels beside, once
        from safetensors.numpy import load

        arrays.update(load(out.files[FROZEN_ADAPTER_FILE]))
    save_file(arrays, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_bytes(out.files["adapter_config.json"])
    ours = build_model(spec, model_root).model
    inputs = {
        "input_ids": torch.tensor([[2, 45, 46, 5, 3]]),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
    }
    # Execute
    base = AutoModelForSequenceClassification.from_pretrained(model_root / "tiny-bert", num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(tmp_path))
    loaded.eval()
    # Assert
    assert json.loads(out.files["adapter_config.json"])["peft_type"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, ours(**inputs).logits)


def test_rejects_version_with_wrong_names_or_shapes(model_root: Path) -> None:
    # Prepare
    model = build_model(tiny_spec(), model_root).model
    good = trainable_arrays(model)
    first = sorted(good)[0]
    renamed = {("x." + n if n == first else n): a for n, a in good.items()}
    reshaped = {n: (a[..., :1] if n == first else a) for n, a in good.items()}
    # Execute / Assert
    with pytest.raises(FedtuneError) as err:
        load_trainable_arrays(model, renamed)
    assert err.value.code is ErrorCode.BAD_MANIFEST
    assert f"missing 1: {first}" in err.value.message and f"unexpected 1: x.{first}" in err.value.message
    with pytest.raises(FedtuneError, match="shape mismatch 1"):
        load_trainable_arrays(model, reshaped)
    with pytest.raises(FedtuneError) as nan_err:
        load_trainable_arrays(model, {n: a * np.nan for n, a in good.items()})
    assert nan_err.value.code is ErrorCode.NON_FINITE


def test_ffa_lora_sends_no_lora_a_and_ships_it_beside(model_root: Path) -> None:
    out = run_init(tiny_spec(peft={"method": "lora", "r": 4, "freeze_a": True}), model_root)
    assert out.arrays and not any("lora_A" in n for n in out.arrays)
    assert any("lora_B" in n for n in out.arrays)
    assert FROZEN_ADAPTER_FILE in out.files


def test_prompt_tuning_sends_only_prompt_and_head(model_root: Path) -> None:
    out = run_init(tiny_spec(peft={"method": "prompt_tuning", "num_virtual_tokens": 4}), model_root)
    assert set(out.arrays) == {
        "prompt_embeddings",
        "base_model.classifier.weight",
        "base_model.classifier.bias",
    }
    assert out.arrays["prompt_embeddings"].shape == (4, 32)


def test_prefix_tuning_on_bert_classification_is_refused_clearly(model_root: Path) -> None:
    with pytest.raises(FedtuneError) as err:
        run_init(tiny_spec(peft={"method": "prefix_tuning", "num_virtual_tokens": 4}), model_root)
    assert err.value.code is ErrorCode.INVALID_SPEC and "past_key_values" in err.value.message


def test_missing_base_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(FedtuneError) as err:
        run_init(tiny_spec(), tmp_path)
    assert err.value.code is ErrorCode.NOT_FOUND and "tiny-bert" in err.value.message


@pytest.mark.parametrize("init", ["sample_vocab", "random"])
def test_prompt_tokens_start_from_vocabulary_embeddings_unless_random(model_root: Path, init: str) -> None:
    spec = tiny_spec(peft={"method": "prompt_tuning", "num_virtual_tokens": 4, "init": init})

    built = build_model(spec, model_root)

    prompts = built.model.prompt_encoder["default"].embedding.weight.detach()
    vocab = built.model.get_base_model().bert.embeddings.word_embeddings.weight.detach()
    from_vocab = [bool((vocab == row).all(dim=1).any()) for row in prompts]
    assert all(from_vocab) if init == "sample_vocab" else not any(from_vocab)
