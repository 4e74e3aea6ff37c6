"""The GPU check (bench/gpu_check.py): its refusal without CUDA, its specs, and its CPU smoke run.

The smoke runs every step of the real check (model from config, the worker's train task for each
variant, one federated round through the real coordinator with two workers) on a tiny Llama on the
CPU; the 1B figures themselves need a CUDA machine (bench/gpu_check.sh).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from fedtune.spec import parse_spec


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_check_stops_at_once_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = gpu_check.main(["--out-dir", str(tmp_path)])
    # Assert: exit 2, the reason and the way out, nothing written
    assert code == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--cpu-smoke" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("variant", gpu_check.VARIANTS, ids=lambda v: v.name)
def test_every_variant_is_a_valid_spec_with_its_precision(variant: gpu_check.Variant) -> None:
    spec = parse_spec(gpu_check.spec_dict(gpu_check.GPU, variant, steps=12))
    assert spec.base_model.quantization == variant.quantization and spec.base_model.dtype == "bf16"
    assert spec.training_for(0).gradient_checkpointing is variant.gradient_checkpointing


def test_the_gpu_profile_builds_a_model_of_about_a_billion_parameters() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**gpu_check.LLAMA_1B, tie_word_embeddings=False))
    assert 1.0e9 < sum(p.numel() for p in model.parameters()) < 1.2e9


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_the_report(tmp_path: Path) -> None:
    # Execute
    code = gpu_check.main(["--cpu-smoke", "--out-dir", str(tmp_path)])
    # Assert: measured LoRA rows, QLoRA skipped with the reason, a completed round of two sites
    assert code == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert rows["bf16 LoRA"]["tokens_per_second"] > 0
    assert rows["bf16 LoRA + checkpointing"]["tokens_per_second"] > 0
    assert "need CUDA" in rows["nf4 QLoRA"]["skipped"]
    assert report["federated_round"]["state"] == "completed"
    assert report["federated_round"]["updates_received"] == 2
    assert "| bf16 LoRA |" in (tmp_path / "gpu-check.md").read_text()
