"""`experiment …`, `round …` and `rounds`: submit, inspect and steer experiments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.console import Group, RenderableType

from admin import render
from admin.context import AdminContext, pass_admin


@click.group("experiment")
def experiment_group() -> None:
    """Submit, inspect and steer experiments.

    \b
    Examples:
      fedtune admin experiment submit spec.yaml --start
      fedtune admin experiment list
      fedtune admin experiment show exp-3f2a
      fedtune admin experiment abort exp-3f2a --reason "wrong data split"
    """


def _read_spec(path: str) -> str:
    try:
        with click.open_file(path, "r", encoding="utf-8") as handle:
            return str(handle.read())
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise click.BadParameter(f"cannot read {path}: {reason}", param_hint="'SPEC.yaml'") from None


@experiment_group.command("submit")
@click.argument(
    "spec", metavar="SPEC.yaml", type=click.Path(exists=True, dir_okay=False, readable=True, allow_dash=True)
)
@click.option("--start", is_flag=True, help="Start the experiment right away.")
@pass_admin
def experiment_submit(admin: AdminContext, spec: str, start: bool) -> None:
    """Submit the experiment described by SPEC.yaml (`-` reads stdin).

    The coordinator validates the spec; a bad field is reported with its path
    (exit code 5).

    \b
    Examples:
      fedtune admin experiment submit spec.yaml
      fedtune admin experiment submit spec.yaml --start
      fedtune admin --json experiment submit spec.yaml | jq -r .experiment_id
    """
    experiment = admin.client().submit_experiment(_read_spec(spec), start=start)
    eid = experiment.experiment_id
    hint = (
        f"follow it with: fedtune admin watch {eid}"
        if start
        else f"start it with: fedtune admin experiment start {eid}"
    )
    admin.output(
        render.to_jsonable(experiment),
        render.plain(f"Submitted experiment {eid} ({experiment.name}), state {experiment.state}; {hint}"),
    )


@experiment_group.command("list")
@pass_admin
def experiment_list(admin: AdminContext) -> None:
    """List all experiments.

    \b
    Examples:
      fedtune admin experiment list
      fedtune admin --json experiment list | jq -r '.experiments[].experiment_id'
    """
    admin.output_list(
        "experiments",
        admin.client().list_experiments(),
        render.experiments_table,
        "No experiments yet; submit one with: fedtune admin experiment submit SPEC.yaml",
    )


@experiment_group.command("show")
@click.argument("experiment_id")
@pass_admin
def experiment_show(admin: AdminContext, experiment_id: str) -> None:
    """Show one experiment, with its spec.

    \b
    Examples:
      fedtune admin experiment show exp-3f2a
      fedtune admin --json experiment show exp-3f2a | jq -r .spec_yaml
    """
    experiment = admin.client().get_experiment(experiment_id)
    admin.output(
        render.to_jsonable(experiment),
        render.experiment_details(experiment),
        render.plain(""),
        render.plain(experiment.spec_yaml.rstrip("\n") or "# (no spec)"),
    )


# verb -> (AdminClient method, past tense)
_LIFECYCLE: dict[str, tuple[str, str]] = {
    "start": ("start_experiment", "started"),
    "pause": ("pause_experiment", "paused"),
    "resume": ("resume_experiment", "resumed"),
    "abort": ("abort_experiment", "aborted"),
}


def _lifecycle_command(verb: str, noun: str, help_text: str) -> click.Command:
    method_name, past = _LIFECYCLE[verb]

    @click.command(verb, help=help_text)
    @click.argument("experiment_id")
    @click.option("--reason", default="", metavar="TEXT", help="Why; kept in the coordinator's audit log.")
    @pass_admin
    def command(admin: AdminContext, experiment_id: str, reason: str) -> None:
        method: Callable[[str, str], Any] = getattr(admin.client(), method_name)
        experiment = method(experiment_id, reason)
        where = f"stage {experiment.current_stage or '-'}, round {experiment.current_round or '-'}"
        admin.output(
            render.to_jsonable(experiment),
            render.plain(
                f"{noun.format(eid=experiment.experiment_id)} {past}: state {experiment.state} ({where})"
            ),
        )

    return command


for _verb in _LIFECYCLE:
    experiment_group.add_command(
        _lifecycle_command(
            _verb,
            "Experiment {eid}",
            f"""{_verb.capitalize()} experiment EXPERIMENT_ID.

            \b
            Examples:
              fedtune admin experiment {_verb} exp-3f2a
              fedtune admin experiment {_verb} exp-3f2a --reason "maintenance window"
            """,
        )
    )


@click.group("round")
def round_group() -> None:
    """Start, pause, resume or abort the rounds of an experiment.

    Rounds are scheduled per experiment, so these are the same calls as
    `experiment start|pause|resume|abort`: a paused experiment opens no new round.

    \b
    Examples:
      fedtune admin round pause exp-3f2a --reason "site b maintenance"
      fedtune admin round resume exp-3f2a
      fedtune admin rounds exp-3f2a
    """


for _verb in _LIFECYCLE:
    round_group.add_command(
        _lifecycle_command(
            _verb,
            "Rounds of experiment {eid}",
            f"""{_verb.capitalize()} the rounds of experiment EXPERIMENT_ID.

            Rounds are scheduled per experiment: this is the same call as `experiment {_verb}`.

            \b
            Examples:
              fedtune admin round {_verb} exp-3f2a
              fedtune admin round {_verb} exp-3f2a --reason "maintenance window"
            """,
        )
    )


@click.command("rounds")
@click.argument("experiment_id")
@click.option(
    "--sites", "by_site", is_flag=True, help="Also list each site's update: examples, weight, metrics, size."
)
@pass_admin
def rounds_list(admin: AdminContext, experiment_id: str, by_site: bool) -> None:
    """List the rounds of an experiment: state, updates in, metrics, resulting model.

    Round metrics are the example-weighted means of what the sites reported (plus the strategy's
    own figures as strategy.*); --sites shows each site's figures. The JSON output always holds them
    (`site_updates`).

    \b
    Examples:
      fedtune admin rounds exp-3f2a
      fedtune admin rounds exp-3f2a --sites
      fedtune admin --json rounds exp-3f2a | jq '.rounds[-1].metrics'
      fedtune admin --json rounds exp-3f2a | jq '.rounds[-1].site_updates[] | [.site, .metrics.eval_accuracy]'
    """
    rounds = admin.client().list_rounds(experiment_id)
    human: RenderableType = (
        render.rounds_table(rounds)
        if rounds
        else render.plain(f"Experiment {experiment_id} has no rounds yet.")
    )
    if rounds and by_site:
        human = Group(human, render.site_updates_table(rounds))
    admin.output({"experiment_id": experiment_id, "rounds": [render.to_jsonable(r) for r in rounds]}, human)
