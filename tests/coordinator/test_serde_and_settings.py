"""Round trips of fedtune.serde, and settings precedence (file < env < overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from fedtune import serde
from fedtune.errors import FedtuneError
from fedtune.tensorstream.manifest import Manifest, TensorSpec

MANIFEST = Manifest.of(
    [TensorSpec("w", "float32", (2, 3), 24), TensorSpec("b", "bfloat16", (3,), 6)], "ab" * 32
)


@pytest.mark.parametrize(
    ("record", "to_proto", "from_proto"),
    [
        (
            serde.ExperimentRecord("e", "n", "running", "y", "finetune", 0, 2, 1.0, 2.0, "", "mv"),
            serde.experiment_to_proto,
            serde.experiment_from_proto,
        ),
        (
            serde.RoundRecord(
                "r",
                "e",
                "finetune",
                0,
                1,
                "committed",
                3,
                2,
                1.0,
                9.0,
                5.0,
                "",
                {"loss": 0.5},
                "mv",
                (
                    serde.SiteUpdateRecord("a", 40, 40.0, {"eval_accuracy": 0.75}, 1024, "folded"),
                    serde.SiteUpdateRecord("b", 7, 0.0, {}, 3 << 31, "verified"),
                ),
                ("c",),
                "1 update(s) in, min_sites=2; offline: c",
            ),
            serde.round_to_proto,
            serde.round_from_proto,
        ),
        (
            serde.WorkerRecord("a", "wk", "busy", 3.0, "cpu", "t", {"train.jsonl": 10}),
            serde.worker_to_proto,
            serde.worker_from_proto,
        ),
        (
            serde.SiteRecord("hospital-a", 1.0, 5.0, 2, 4.0),
            serde.site_to_proto,
            serde.site_from_proto,
        ),
        (
            serde.ModelVersionRecord(
                "mv",
                "e",
                1,
                "mv0",
                "finetune",
                1,
                "adapter",
                "d" * 64,
                MANIFEST,
                {"acc": 0.9},
                ("a", "b"),
                12,
                4.0,
                ("adapter_config.json",),
                "exported",
                7.0,
            ),
            serde.model_version_to_proto,
            serde.model_version_from_proto,
        ),
        (
            serde.StorageUsageRecord(
                10, 2, 4, 1, 3, 1, 2, 5, 1, (serde.ExperimentStorageRecord("e", "n", 4, 1, 6 << 31, 7),)
            ),
            serde.storage_usage_to_proto,
            serde.storage_usage_from_proto,
        ),
        (
            serde.GcReportRecord(False, 2, ("mv1", "mv2"), 1, 3, 3 << 31, 1, 2, 200, 0.5),
            serde.gc_report_to_proto,
            serde.gc_report_from_proto,
        ),
        (
            serde.EventRecord(1, 2.0, "e", "round.opened", "msg", {"round": 1}),
            serde.event_to_proto,
            serde.event_from_proto,
        ),
        (
            serde.TaskRecord("t", "train", "e", "finetune", 0, 2, "{}", "mv", MANIFEST, 9.0, "weights", ""),
            serde.task_to_proto,
            serde.task_from_proto,
        ),
        (
            serde.UpdateHeaderRecord("t", 5, MANIFEST, {"loss": 1.0}, {"f.json": b"{}"}, True),
            serde.update_header_to_proto,
            serde.update_header_from_proto,
        ),
    ],
)
def test_records_survive_a_proto_round_trip(record: object, to_proto, from_proto) -> None:  # type: ignore[no-untyped-def]
    assert from_proto(to_proto(record)) == record


def test_settings_merge_file_env_and_overrides(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "coordinator.yaml"
    config.write_text("port: 6000\nheartbeat_seconds: 2\nadmin_token: from-file\n")

    # Execute
    settings = CoordinatorSettings.load(
        config, env={"FEDTUNE_PORT": "7000", "FEDTUNE_SITES": "a:x,b:y"}, admin_token="from-flag", host=None
    )

    # Assert
    assert settings.port == 7000 and settings.heartbeat_seconds == 2 and settings.admin_token == "from-flag"
    assert settings.seeded_sites() == {"a": "x", "b": "y"} and settings.host == "0.0.0.0"
    assert settings.resolved_database_url.endswith("fedtune-data/fedtune.db")


def test_settings_reject_a_bad_value_naming_it() -> None:
    with pytest.raises(FedtuneError, match="sites"):
        CoordinatorSettings.load(env={"FEDTUNE_SITES": "missing-token"})
