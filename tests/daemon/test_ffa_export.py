"""ExportModel of an FFA-LoRA version: the real worker's INIT output through the real coordinator services.

The frozen lora_A tensors travel as the side file frozen_adapter.safetensors; the export merges them
into the tensor stream (digest verified by the StreamDecoder) so peft loads a complete adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.bootstrap import Services, bootstrap
from coordinator.downloads import FROZEN_ADAPTER_FILE, SideFile
from fedtune.serde import UpdateHeaderRecord
from fedtune.tensorstream.decoder import StreamDecoder
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from fedtune.tensorstream.manifest import Manifest
from tests.fixtures.tiny import make_tiny_model, tiny_spec
from tests.support.cluster import SITES, make_settings
from tests.worker.helpers import build_model
from worker.tasks import run_init

SPEC = """
name: ffa
base_model: {name: tiny-bert}
task: sequence-classification
labels: [sport, business]
peft: {method: lora, r: 4, alpha: 8, dropout: 0.0, freeze_a: true}
stages: [{kind: finetune, rounds: 1, selection: {min_sites: 1}}]
"""


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = bootstrap(make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'unit.db'}"))
    yield built
    built.close()


def _store_initial_version(services: Services, model_root: Path) -> tuple[str, dict[str, np.ndarray]]:
    site_id = services.auth.authenticate_site("a", SITES["a"])
    worker_id = services.tasks.register(site_id, worker_version="t", device={}, dataset_sizes={})
    experiment_id = services.experiments.submit(SPEC, start=True)
    services.scheduler.tick()
    task = services.tasks.pull(site_id, worker_id, 0)
    assert task is not None and task.kind == "init"
    out = run_init(tiny_spec(**_spec_overrides()), model_root)
    manifest = manifest_for_arrays(out.arrays)
    header = UpdateHeaderRecord(task_id=task.task_id, num_examples=0, manifest=manifest, files=out.files)
    version_id, _ = services.uploads.push(
        site_id, iter([header, *iter_chunks_from_arrays(out.arrays, manifest)])
    )
    assert experiment_id
    return version_id, out.arrays


def _spec_overrides() -> dict:
    return {"peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "freeze_a": True}, "seed": 0}


def _export_to(services: Services, version_id: str, out_dir: Path) -> list[str]:
    out_dir.mkdir()
    decoder: StreamDecoder | None = None
    side_files = []
    for item in services.downloads.export(version_id):
        if isinstance(item, Manifest):
            decoder = StreamDecoder(item, out_dir / "adapter_model.safetensors")
        elif isinstance(item, SideFile):
            (out_dir / item.name).write_bytes(item.content)
            side_files.append(item.name)
        else:
            assert decoder is not None
            decoder.add(item)
    assert decoder is not None and decoder.complete
    decoder.finish()  # verifies the union's digest
    return side_files


@pytest.mark.slow
def test_export_of_an_ffa_lora_version_is_a_complete_adapter_that_peft_loads(
    services: Services, tmp_path: Path
) -> None:
    # Prepare
    model_root = tmp_path / "models"
    make_tiny_model(model_root, "tiny-bert", "bert")
    version_id, trained = _store_initial_version(services, model_root)

    # Execute
    side_files = _export_to(services, version_id, tmp_path / "export")

    # Assert
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForSequenceClassification

    assert FROZEN_ADAPTER_FILE not in side_files and "adapter_config.json" in side_files
    exported = load_file(str(tmp_path / "export" / "adapter_model.safetensors"))
    frozen_names = [n for n in exported if n not in trained]
    assert list(exported) == sorted(exported)
    assert frozen_names and all("lora_A" in n for n in frozen_names)
    base = AutoModelForSequenceClassification.from_pretrained(str(model_root / "tiny-bert"), num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "export")).eval()
    reference = build_model(tiny_spec(**_spec_overrides()), model_root).model.eval()
    inputs = {
        "input_ids": torch.tensor([[2, 7, 9, 11, 3]]),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
    }
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, reference(**inputs).logits)
    with torch.no_grad():  # the lora_A in the loaded model are the frozen seeded ones, not zeros/defaults
        a_loaded = {n: p for n, p in loaded.named_parameters() if "lora_A" in n}
        a_ref = {n: p for n, p in reference.named_parameters() if "lora_A" in n}
        assert a_loaded.keys() == a_ref.keys()
        for name in a_loaded:
            torch.testing.assert_close(a_loaded[name], a_ref[name])
