"""`sites add|list|revoke|rotate-token`, `workers`, `watch`, `status`: the operating side of a federation."""

from __future__ import annotations

import click

from admin import render
from admin.context import AdminContext, pass_admin


@click.group("sites")
def sites_group() -> None:
    """Register, list, revoke sites (institutions) that may run a worker, and rotate their tokens.

    A site name is 1-64 ASCII lowercase letters, digits, '.', '_' or '-', starting with a letter or
    digit; names are unique ignoring case.

    \b
    Examples:
      fedtune admin sites add hospital-a
      fedtune admin sites list
      fedtune admin sites rotate-token hospital-a
      fedtune admin sites revoke hospital-a --reason "token leaked"
    """


@sites_group.command("add")
@click.argument("name")
@pass_admin
def sites_add(admin: AdminContext, name: str) -> None:
    """Register site NAME and print its token (shown once; the coordinator keeps only a hash).

    \b
    Examples:
      fedtune admin sites add hospital-a
      TOKEN=$(fedtune admin --json sites add hospital-a | jq -r .token)
    """
    site = admin.client().add_site(name)
    if admin.json_output:
        admin.output(render.to_jsonable(site))
        return
    # Plain echo, not rich: the token must never be wrapped or styled.
    click.echo(f"Site {site.name} added. Its token (shown only this once, keep it secret):\n")
    click.echo(f"  {site.token}\n")
    click.echo("Start the site's worker with it, e.g.:")
    _worker_hint(admin, site.name, site.token)


def _worker_hint(admin: AdminContext, name: str, token: str) -> None:
    click.echo(f"  fedtune worker run --coordinator {admin.target} --site {name} --token {token} \\")
    click.echo("      --data-root ./data --model-root ./models")


@sites_group.command("list")
@pass_admin
def sites_list(admin: AdminContext) -> None:
    """List the sites: active or revoked, workers online, last seen.

    \b
    Examples:
      fedtune admin sites list
      fedtune admin --json sites list | jq -r '.sites[] | select(.revoked_unix == 0) | .name'
    """
    admin.output_list(
        "sites",
        admin.client().list_sites(),
        render.sites_table,
        "No sites yet; add one with: fedtune admin sites add NAME",
    )


@sites_group.command("rotate-token")
@click.argument("name")
@pass_admin
def sites_rotate_token(admin: AdminContext, name: str) -> None:
    """Give site NAME a new token and print it once; the old token stops working at once.

    The site's worker must be restarted with the new token. A site seeded from the coordinator's
    FEDTUNE_SITES gets its settings token back at the next start: change it there too.

    \b
    Examples:
      fedtune admin sites rotate-token hospital-a
      TOKEN=$(fedtune admin --json sites rotate-token hospital-a | jq -r .token)
    """
    site = admin.client().rotate_site_token(name)
    if admin.json_output:
        admin.output(render.to_jsonable(site))
        return
    click.echo(f"Site {site.name} has a new token (shown only this once; the old one no longer works):\n")
    click.echo(f"  {site.token}\n")
    click.echo("Restart the site's worker with it, e.g.:")
    _worker_hint(admin, site.name, site.token)


@sites_group.command("revoke")
@click.argument("name")
@click.option("--reason", default="", help="Why; kept in the audit log (site.revoked event).")
@pass_admin
def sites_revoke(admin: AdminContext, name: str, reason: str) -> None:
    """Revoke site NAME: it can no longer authenticate, its workers go offline, its unfinished round
    tasks fail (the rounds close with the other sites) and its pending init tasks go to another site.

    Updates it sent before stay in their rounds. A revoked site cannot be reinstated or its name
    reused: add the institution again under a new name.

    \b
    Examples:
      fedtune admin sites revoke hospital-a --reason "token leaked"
      fedtune admin --json sites revoke hospital-a | jq .tasks_failed
    """
    done = admin.client().revoke_site(name, reason)
    admin.output(
        render.to_jsonable(done),
        render.plain(
            f"Site {done.site.name} revoked: {done.tasks_failed} task(s) failed, "
            f"{done.tasks_cancelled} init task(s) handed to another site."
        ),
    )


@click.command("workers")
@pass_admin
def workers(admin: AdminContext) -> None:
    """List the workers the coordinator knows: site, state, device, current task.

    \b
    Examples:
      fedtune admin workers
      fedtune admin --json workers | jq -r '.workers[] | select(.state=="online") | .site'
    """
    admin.output_list(
        "workers",
        admin.client().list_workers(),
        render.workers_table,
        "No workers have connected yet; start one with: fedtune worker run ...",
    )


@click.command("watch")
@click.argument("experiment_id", required=False, default="")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep streaming new events.")
@click.option(
    "--after",
    "after_id",
    type=click.IntRange(min=0),
    default=0,
    metavar="ID",
    help="Only events after this event id (resume a previous watch).",
)
@pass_admin
def watch(admin: AdminContext, experiment_id: str, follow: bool, after_id: int) -> None:
    """Stream events (rounds opened and committed, updates accepted, …); Ctrl-C stops.

    Past events come first, then live ones. With --json, one JSON object per line.

    \b
    Examples:
      fedtune admin watch
      fedtune admin watch exp-3f2a
      fedtune admin watch exp-3f2a --no-follow --after 120
      fedtune admin --json watch | jq -c 'select(.kind=="round.committed")'
    """
    console = None if admin.json_output else render.make_console()
    events = admin.client().watch_events(experiment_id, after_id=after_id, follow=follow)
    try:
        for event in events:
            if console is None:
                click.echo(render.dump_json(render.to_jsonable(event), lines=True))
            else:
                console.print(render.event_line(event))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: exit 0
    finally:
        events.close()


@click.command("status")
@pass_admin
def status(admin: AdminContext) -> None:
    """Show the coordinator's version, uptime, running experiments and online workers.

    \b
    Examples:
      fedtune admin status
      fedtune admin --coordinator coord.example.org:50051 --json status
    """
    result = admin.client().get_status()
    admin.output(
        {"coordinator": admin.target, **render.to_jsonable(result)},
        render.status_details(result, admin.target),
    )
