"""`models list|show|export`: the model registry, read through the coordinator."""

from __future__ import annotations

from pathlib import Path

import click

from admin import render
from admin.context import AdminContext, pass_admin


@click.group("models")
def models_group() -> None:
    """List, inspect, export and pin model versions.

    \b
    Examples:
      fedtune admin models list --experiment exp-3f2a
      fedtune admin models show mv-91c0
      fedtune admin models export mv-91c0 --out ./adapter
      fedtune admin models pin mv-91c0 --reason "paper baseline"
    """


@models_group.command("list")
@click.option(
    "--experiment", "experiment_id", default="", metavar="ID", help="Only this experiment's versions."
)
@pass_admin
def models_list(admin: AdminContext, experiment_id: str) -> None:
    """List model versions (all, or one experiment's).

    \b
    Examples:
      fedtune admin models list
      fedtune admin models list --experiment exp-3f2a
      fedtune admin --json models list | jq -r '.models[] | select(.kind=="adapter") | .version_id'
    """
    admin.output_list(
        "models", admin.client().list_models(experiment_id), render.models_table, "No model versions yet."
    )


@models_group.command("show")
@click.argument("version_id")
@pass_admin
def models_show(admin: AdminContext, version_id: str) -> None:
    """Show one model version: lineage, metrics, sites, tensors.

    \b
    Examples:
      fedtune admin models show mv-91c0
      fedtune admin --json models show mv-91c0 | jq .metrics
    """
    model = admin.client().get_model(version_id)
    admin.output(render.to_jsonable(model), *render.model_details(model))


@models_group.command("export")
@click.argument("version_id")
@click.option(
    "--out",
    "out_dir",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False, writable=True, path_type=Path),
    help="Directory to write (made if missing); existing files of the same name are replaced.",
)
@pass_admin
def models_export(admin: AdminContext, version_id: str, out_dir: Path) -> None:
    """Export a model version as safetensors plus its side files.

    An adapter (kind adapter or personalized) becomes adapter_model.safetensors +
    adapter_config.json, which peft loads:

    \b
      PeftModel.from_pretrained(base_model, "./adapter")

    A base version becomes model.safetensors + its config files. Tensors stream
    straight to disk, so memory use does not grow with the model.

    \b
    Examples:
      fedtune admin models export mv-91c0 --out ./adapter
      fedtune admin --json models export mv-91c0 --out ./adapter | jq -r '.files[]'
    """
    files = admin.client().export_model(version_id, out_dir)
    document = {"version_id": version_id, "out_dir": str(out_dir), "files": [str(f) for f in files]}
    rows = [[path.name, render.fmt_bytes(path.stat().st_size)] for path in files]
    admin.output(
        document,
        render.plain(f"Exported model {version_id} to {out_dir}"),
        render.table(None, ["FILE", "SIZE"], rows),
    )


@models_group.command("pin")
@click.argument("version_id")
@click.option("--reason", default="", help="Why; kept with the pin and in the audit log.")
@pass_admin
def models_pin(admin: AdminContext, version_id: str, reason: str) -> None:
    """Keep a version's tensors whatever the retention policy says.

    The policy (`retention_keep_last`) keeps each experiment's last versions, every stage's
    final version and every pinned one; an export pins what it exports.

    \b
    Examples:
      fedtune admin models pin mv-91c0 --reason "paper baseline"
    """
    model = admin.client().pin_model(version_id, True, reason)
    admin.output(render.to_jsonable(model), render.plain(f"Pinned model {version_id}: {model.pinned}"))


@models_group.command("unpin")
@click.argument("version_id")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@pass_admin
def models_unpin(admin: AdminContext, version_id: str, reason: str) -> None:
    """Hand a pinned version back to the retention policy.

    \b
    Examples:
      fedtune admin models unpin mv-91c0
    """
    model = admin.client().pin_model(version_id, False, reason)
    admin.output(render.to_jsonable(model), render.plain(f"Unpinned model {version_id}"))
