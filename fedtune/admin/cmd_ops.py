"""`sites add`, `workers`, `watch`, `status`: the operating side of a federation."""

from __future__ import annotations

import click
from rich.console import RenderableType

from fedtune.admin import render
from fedtune.admin.context import AdminContext, pass_admin


@click.group("sites")
def sites_group() -> None:
    """Register sites (institutions) that may run a worker.

    \b
    Examples:
      fedtune admin sites add hospital-a
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
    click.echo(
        f"  fedtune worker run --coordinator {admin.target} --site {site.name} --token {site.token} \\"
    )
    click.echo("      --data-root ./data --model-root ./models")


@click.command("workers")
@pass_admin
def workers(admin: AdminContext) -> None:
    """List the workers the coordinator knows: site, state, device, current task.

    \b
    Examples:
      fedtune admin workers
      fedtune admin --json workers | jq -r '.workers[] | select(.state=="online") | .site'
    """
    found = admin.client().list_workers()
    human: RenderableType = (
        render.workers_table(found)
        if found
        else render.plain("No workers have connected yet; start one with: fedtune worker run ...")
    )
    admin.output({"workers": [render.to_jsonable(w) for w in found]}, human)


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
