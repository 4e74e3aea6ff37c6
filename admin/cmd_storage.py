"""`storage usage|gc`: what the coordinator's disk holds, and garbage collection (decision 33)."""

from __future__ import annotations

import click

from admin import render
from admin.context import AdminContext, pass_admin


@click.group("storage")
def storage_group() -> None:
    """See and reclaim the coordinator's disk: blobs, spool, retention.

    \b
    Examples:
      fedtune admin storage usage
      fedtune admin storage gc --dry-run
      fedtune admin storage gc
    """


@storage_group.command("usage")
@pass_admin
def storage_usage(admin: AdminContext) -> None:
    """Bytes of blobs (and how many no row needs), spool and work folders, per experiment.

    \b
    Examples:
      fedtune admin storage usage
      fedtune admin --json storage usage | jq .blob_bytes
    """
    usage = admin.client().storage_usage()
    admin.output(render.to_jsonable(usage), *render.storage_usage_details(usage))


@storage_group.command("gc")
@click.option("--dry-run", is_flag=True, help="Report what would go; delete nothing.")
@pass_admin
def storage_gc(admin: AdminContext, dry_run: bool) -> None:
    """Apply the retention policy, then delete blobs and spool files nothing needs.

    Versions past the policy keep their rows (metrics, lineage) but lose their tensors; pinned
    versions, stage finals and versions in use are never pruned. Safe while rounds run.

    \b
    Examples:
      fedtune admin storage gc --dry-run
      fedtune admin --json storage gc | jq .blob_bytes_freed
    """
    report = admin.client().collect_garbage(dry_run)
    admin.output(render.to_jsonable(report), render.gc_report_details(report))
