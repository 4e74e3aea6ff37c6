"""`models list|show|export`: export writes a safetensors file + side files that load back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from admin.client import AdminClient, AdminError
from tests.admin.fake_admin import CannedExport, FakeAdmin, FakeAdminServer
from tests.admin.harness import AdminRun

Admin = Callable[..., AdminRun]
ADAPTER_CONFIG = json.dumps(
    {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"]}
).encode()
LORA_A = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
LORA_B = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        LORA_A: rng.standard_normal((2, 16)).astype(np.float32),
        LORA_B: rng.standard_normal((16, 2)).astype(np.float16),
    }


@pytest.fixture
def adapter(fake: FakeAdmin) -> dict[str, np.ndarray]:
    arrays = _arrays()
    fake.add_model(
        "mv-2", "adapter", CannedExport.from_arrays(arrays, {"adapter_config.json": ADAPTER_CONFIG})
    )
    fake.add_model("mv-base", "base", CannedExport.from_arrays({"w": np.arange(6, dtype=np.int64)}, {}))
    return arrays


def test_models_list_and_filter_by_experiment(admin: Admin, fake: FakeAdmin, adapter: object) -> None:
    human = admin("models", "list")
    machine = admin("--json", "models", "list", "--experiment", "exp-1")

    assert human.exit_code == 0, human.stderr
    assert "mv-2" in human.stdout and "adapter" in human.stdout and "accuracy=0.8123" in human.stdout
    assert [m["version_id"] for m in machine.json["models"]] == ["mv-2", "mv-base"]
    assert fake.requests("ListModels")[1].experiment_id == "exp-1"


def test_models_show_prints_lineage_and_tensors(admin: Admin, adapter: object) -> None:
    human = admin("models", "show", "mv-2")
    machine = admin("--json", "models", "show", "mv-2")

    assert human.exit_code == 0, human.stderr
    assert "mv-1" in human.stdout and "lora_A" in human.stdout and "2x16" in human.stdout
    assert machine.json["manifest"]["tensors"][0] == {
        "name": LORA_A,
        "dtype": "float32",
        "shape": [2, 16],
        "nbytes": 128,
    }
    assert machine.json["num_examples"] == 2400 and machine.json["files"] == ["adapter_config.json"]


def test_models_show_of_an_unknown_version_exits_3(admin: Admin) -> None:
    result = admin("models", "show", "mv-nope")

    assert result.exit_code == 3 and "no model version 'mv-nope'" in result.stderr


def test_export_writes_an_adapter_dir_that_loads_back(
    admin: Admin, adapter: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "adapter"

    result = admin("--json", "models", "export", "mv-2", "--out", str(out))

    assert result.exit_code == 0, result.stderr
    assert result.json["files"] == [str(out / "adapter_model.safetensors"), str(out / "adapter_config.json")]
    loaded = load_file(str(out / "adapter_model.safetensors"))
    assert set(loaded) == {LORA_A, LORA_B}
    for name, array in adapter.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)
    assert (out / "adapter_config.json").read_bytes() == ADAPTER_CONFIG
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_export_of_a_base_version_writes_model_safetensors(
    admin: Admin, adapter: object, tmp_path: Path
) -> None:
    result = admin("models", "export", "mv-base", "--out", str(tmp_path))

    assert result.exit_code == 0, result.stderr
    assert "model.safetensors" in result.stdout
    assert load_file(str(tmp_path / "model.safetensors"))["w"].tolist() == [0, 1, 2, 3, 4, 5]


def test_export_of_a_corrupt_stream_fails_and_leaves_no_files(
    fake: FakeAdmin, fake_server: FakeAdminServer, adapter: object, tmp_path: Path
) -> None:
    export = fake.exports["mv-2"]
    bad = export.chunks[1]
    export.chunks[1] = type(bad)(bad.tensor_index, bad.offset, bytes(len(bad.data)), bad.crc32)

    with AdminClient(fake_server.target, None, 5.0) as client, pytest.raises(AdminError) as caught:
        client.export_model("mv-2", tmp_path)

    assert caught.value.exit_code == 1 and "crc32 mismatch" in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_side_files_that_escape_the_directory(
    fake: FakeAdmin, fake_server: FakeAdminServer, adapter: object, tmp_path: Path
) -> None:
    fake.exports["mv-2"].files = {"../evil.json": b"{}"}
    out = tmp_path / "out"

    with AdminClient(fake_server.target, None, 5.0) as client, pytest.raises(AdminError) as caught:
        client.export_model("mv-2", out)

    assert "bad name '../evil.json'" in caught.value.message
    assert not (tmp_path / "evil.json").exists() and list(out.iterdir()) == []
