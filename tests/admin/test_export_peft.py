"""An exported adapter directory is what peft loads: `PeftModel.from_pretrained(base, out_dir)`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.admin.fake_admin import CannedExport, FakeAdmin, FakeAdminServer
from tests.admin.harness import run_admin


@pytest.mark.slow
def test_exported_adapter_loads_with_peft(
    fake: FakeAdmin, fake_server: FakeAdminServer, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import BertConfig, BertForSequenceClassification

    # Prepare: a tiny BERT with a LoRA adapter whose B matrices are non-zero, saved the peft way.
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    base = BertForSequenceClassification(config)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    trained = peft.get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_()
    source = tmp_path / "source"
    trained.save_pretrained(source)
    fake.add_model(
        "mv-9", "adapter", CannedExport.from_dir(source, "adapter_model.safetensors", ["adapter_config.json"])
    )
    out = tmp_path / "exported"

    # Execute
    result = run_admin(fake_server.target, "models", "export", "mv-9", "--out", str(out))
    fresh = BertForSequenceClassification(config)
    fresh.load_state_dict(base_state)
    loaded = peft.PeftModel.from_pretrained(fresh, out)

    # Assert: every trained LoRA weight came back bit for bit.
    assert result.exit_code == 0, result.stderr
    expected = {n: p for n, p in trained.named_parameters() if "lora_" in n}
    got = dict(loaded.named_parameters())
    assert expected and all(torch.equal(got[n], p) for n, p in expected.items())
