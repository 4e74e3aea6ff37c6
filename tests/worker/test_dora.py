"""DoRA and rsLoRA through peft: exchanged tensors, training, and an export that peft loads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

from tests.fixtures.tiny import instruction_spec
from tests.worker.helpers import build_model, quiet, write_global
from worker.model import load_trainable_arrays
from worker.tasks import run_init, run_train

DORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True}


def test_dora_exchanges_a_magnitude_vector_per_adapted_layer(model_root: Path) -> None:
    # Execute
    arrays = run_init(instruction_spec(peft=DORA), model_root).arrays
    # Assert: q_proj and v_proj of 2 layers, each with A, B and its magnitude (one per output feature)
    magnitudes = {name: a for name, a in arrays.items() if "lora_magnitude_vector" in name}
    assert len(magnitudes) == 4 and len(arrays) == 12
    assert all(a.shape == (32,) for a in magnitudes.values())


def test_dora_trains_its_magnitudes_and_exports_an_adapter_peft_loads(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    # Prepare
    spec = instruction_spec(peft=DORA)
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)
    # Execute
    out = run_train(spec, 0, 1, global_path, chat_data, model_root, site="a", progress=quiet)
    export = tmp_path / "export"
    export.mkdir()
    save_file(out.arrays, str(export / "adapter_model.safetensors"))
    (export / "adapter_config.json").write_bytes(init.files["adapter_config.json"])
    base = AutoModelForCausalLM.from_pretrained(model_root / "tiny-chat")
    loaded = PeftModel.from_pretrained(base, str(export)).eval()
    ours = build_model(spec, model_root).model
    load_trainable_arrays(ours, out.arrays)
    # Assert: the magnitudes moved, and peft's model computes what ours does
    changed = [n for n in init.arrays if "magnitude" in n and not np.allclose(init.arrays[n], out.arrays[n])]
    assert len(changed) == 4
    assert loaded.peft_config["default"].use_dora
    ids = torch.tensor([[2, 3, 9, 6, 10, 11, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, ours(input_ids=ids).logits)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_rslora_scales_by_the_square_root_of_the_rank(model_root: Path, use_rslora: bool) -> None:
    spec = instruction_spec(peft={"method": "lora", "r": 16, "alpha": 8, "use_rslora": use_rslora})
    model = build_model(spec, model_root).model
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(16) if use_rslora else 8 / 16)
    assert model.peft_config["default"].use_rslora is use_rslora
