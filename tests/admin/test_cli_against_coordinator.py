"""`fedtune admin` end to end against the REAL coordinator (in-process, real gRPC, SQLite/PostgreSQL).

Every command runs through the CLI entry with `--json` (parsed and checked against what the
coordinator did) and, once per command group, in human mode. Fake workers (real stubs, random
numpy tensors) drive a 2-site, 2-round experiment to completion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from admin.client import ExitCode
from tests.admin.harness import run_admin
from tests.admin.live_coordinator import Cli, RoundPlan, do_init
from tests.support.cluster import ADMIN_TOKEN, Cluster, make_settings, spec_yaml
from tests.support.fake_worker import ADAPTER_CONFIG, FakeWorker
from tests.support.flow import assert_arrays_close
from tests.support.ports import free_port
from tests.support.waiting import wait_for

SITES = ("hospital-a", "hospital-b")


@pytest.fixture(params=[None, ADMIN_TOKEN], ids=["open", "admin-token"])
def live(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[tuple[Cluster, Cli]]:
    """A real coordinator with no seeded sites, with or without an admin token, and its CLI."""
    token: str | None = request.param
    cluster = Cluster(make_settings(tmp_path / "data", database_url, admin_token=token, sites=""))
    try:
        yield cluster, Cli(cluster.target, token)
    finally:
        cluster.stop()


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def add_site_worker(cluster: Cluster, cli: Cli, site: str) -> FakeWorker:
    """`sites add` through the CLI; the printed token registers a fake worker."""
    added = cli.json("sites", "add", site)
    assert added["name"] == site and added["token"]
    worker = cluster.worker(site, token=added["token"])  # registers (raises if the token is refused)
    assert worker.worker_id
    return worker


def test_every_command_reports_what_the_coordinator_did(live: tuple[Cluster, Cli], tmp_path: Path) -> None:
    cluster, cli = live
    rng = np.random.default_rng(3)

    # sites add: JSON token registers a worker; human mode prints the token and the worker hint
    workers = [add_site_worker(cluster, cli, site) for site in SITES]
    human_site = cli.ok("sites", "add", "hospital-c").stdout
    assert "Its token" in human_site and "--site hospital-c --token " in human_site

    # experiment submit (no --start) then experiment start
    submitted = cli.json("experiment", "submit", write_spec(tmp_path, spec_yaml(rounds=2, min_sites=2)))
    eid = submitted["experiment_id"]
    assert submitted["state"] == "submitted" and submitted["name"] == "test-experiment"
    assert "rounds: 2" in submitted["spec_yaml"]
    assert cli.json("experiment", "start", eid)["state"] == "running"

    # INIT, then round 1 with the rounds paused mid-round: the round still commits, no round 2 opens
    expected = {0: do_init(workers)}
    plan = RoundPlan.pull(workers, 1, rng)
    assert cli.json("round", "pause", eid, "--reason", "maintenance")["state"] == "paused"
    expected[1], _, _ = plan.push()
    cli.committed_round(eid, 1)
    assert not wait_for_any_round(cli, eid, 2, seconds=0.4), "a paused experiment opened round 2"
    assert cli.json("round", "resume", eid)["state"] == "running"
    expected[2], examples_2, metrics_2 = RoundPlan.pull(workers, 2, rng).push()
    cli.committed_round(eid, 2)
    shown = wait_for(lambda: (e := cli.json("experiment", "show", eid))["state"] == "completed" and e)

    # experiment show / list
    rounds = cli.json("rounds", eid)
    assert rounds["experiment_id"] == eid
    assert [(r["round"], r["state"], r["updates_received"], r["tasks_total"]) for r in rounds["rounds"]] == [
        (1, "committed", 2, 2),
        (2, "committed", 2, 2),
    ]
    v1, v2 = (r["model_version_id"] for r in rounds["rounds"])
    assert shown["current_round"] == 2 and shown["current_stage"] == "finetune"
    assert shown["latest_model_version_id"] == v2 and shown["spec_yaml"] == submitted["spec_yaml"]
    assert [(e["experiment_id"], e["state"]) for e in cli.json("experiment", "list")["experiments"]] == [
        (eid, "completed")
    ]
    human_show = cli.ok("experiment", "show", eid).stdout
    assert eid in human_show and "completed" in human_show and "rounds: 2" in human_show

    # rounds (human)
    human_rounds = cli.ok("rounds", eid).stdout
    assert human_rounds.count("committed") >= 2 and v2 in human_rounds

    # workers
    listed_workers = cli.json("workers")["workers"]
    assert sorted(w["site"] for w in listed_workers) == list(SITES)
    assert {w["worker_id"] for w in listed_workers} == {w.worker_id for w in workers}
    assert all(w["state"] in ("online", "busy") and w["device"] for w in listed_workers)
    assert all(site in cli.ok("workers").stdout for site in SITES)

    # models list [--experiment] / show
    models = cli.json("models", "list", "--experiment", eid)["models"]
    assert sorted((m["version"], m["round"]) for m in models) == [(0, 0), (1, 1), (2, 2)]
    assert {m["version_id"] for m in models} >= {v1, v2}
    assert {m["version_id"] for m in cli.json("models", "list")["models"]} == {
        m["version_id"] for m in models
    }
    assert v2 in cli.ok("models", "list", "--experiment", eid).stdout
    model = cli.json("models", "show", v2)
    assert (model["version_id"], model["experiment_id"], model["parent_id"]) == (v2, eid, v1)
    assert (model["version"], model["round"], model["kind"], model["stage"]) == (2, 2, "adapter", "finetune")
    assert sorted(model["sites"]) == list(SITES) and model["num_examples"] == examples_2
    assert model["metrics"]["loss"] == pytest.approx(metrics_2["loss"])
    assert model["files"] == ["adapter_config.json"]
    assert sorted(t["name"] for t in model["manifest"]["tensors"]) == sorted(expected[2])
    human_model = cli.ok("models", "show", v2).stdout
    assert v2 in human_model and "layer.0.lora_A.weight" in human_model

    # models export: every version loads with safetensors and equals the version's tensors
    for version in models:
        out = tmp_path / f"export-{version['version']}"
        exported = cli.json("models", "export", version["version_id"], "--out", str(out))
        assert exported["version_id"] == version["version_id"] and exported["out_dir"] == str(out)
        assert [Path(f).name for f in exported["files"]] == [
            "adapter_model.safetensors",
            "adapter_config.json",
        ]
        tensors = load_file(str(out / "adapter_model.safetensors"))
        assert_arrays_close(tensors, expected[version["version"]])
        for name, array in workers[0].fetch(version["version_id"]).items():
            np.testing.assert_array_equal(tensors[name], array, err_msg=name)  # bit for bit
        assert (out / "adapter_config.json").read_bytes() == ADAPTER_CONFIG
    human_export = cli.ok("models", "export", v2, "--out", str(tmp_path / "human-export")).stdout
    assert f"Exported model {v2}" in human_export and "adapter_model.safetensors" in human_export

    # watch --no-follow: JSON lines, ending on its own
    events = cli.ok("--json", "watch", eid, "--no-follow").json_lines
    kinds = [e["kind"] for e in events]
    assert kinds.count("round.committed") == 2 and "experiment.submitted" in kinds
    assert all(e["experiment_id"] == eid and json.loads(e["data_json"]) is not None for e in events)
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    after = cli.ok("--json", "watch", eid, "--no-follow", "--after", str(ids[-2])).json_lines
    assert [e["event_id"] for e in after] == ids[-1:]
    assert "round.committed" in cli.ok("watch", eid, "--no-follow").stdout

    # status
    status = cli.json("status")
    assert status["coordinator"] == cluster.target and status["version"]
    assert status["experiments_running"] == 0 and status["workers_online"] == 2
    assert status["data_dir"] == str(cluster.settings.data_dir)
    assert status["version"] in cli.ok("status").stdout

    # a completed experiment cannot be paused, resumed, started or aborted
    for verb in ("pause", "resume", "start", "abort"):
        refused = cli.run("experiment", verb, eid)
        assert refused.exit_code == ExitCode.INVALID, (verb, refused.exit_code, refused.stderr)
        assert "completed" in refused.stderr and refused.stdout == ""


def wait_for_any_round(cli: Cli, experiment_id: str, round_number: int, seconds: float) -> bool:
    """True if round `round_number` appears within `seconds` (used to show that none does)."""
    try:
        wait_for(
            lambda: any(r["round"] == round_number for r in cli.json("rounds", experiment_id)["rounds"]),
            timeout=seconds,
        )
    except AssertionError:
        return False
    return True


def test_lifecycle_commands_move_experiments_through_their_states(
    live: tuple[Cluster, Cli], tmp_path: Path
) -> None:
    cluster, cli = live
    spec = write_spec(tmp_path, spec_yaml(rounds=1, min_sites=1))

    # experiment submit --start, pause, resume, abort
    started = cli.json("experiment", "submit", spec, "--start")
    eid = started["experiment_id"]
    assert started["state"] == "running"
    assert cli.json("experiment", "pause", eid, "--reason", "checking")["state"] == "paused"
    human_resume = cli.ok("experiment", "resume", eid).stdout
    assert f"Experiment {eid} resumed: state running" in human_resume
    aborted = cli.json("experiment", "abort", eid, "--reason", "wrong split")
    assert aborted["state"] == "aborted" and "wrong split" in aborted["error"]

    # human submit, round start (human), round abort
    human_submit = cli.ok("experiment", "submit", spec).stdout
    other = next(e for e in cli.json("experiment", "list")["experiments"] if e["experiment_id"] != eid)
    assert (
        f"Submitted experiment {other['experiment_id']}" in human_submit and "state submitted" in human_submit
    )
    human_start = cli.ok("round", "start", other["experiment_id"]).stdout
    assert f"Rounds of experiment {other['experiment_id']} started: state running" in human_start
    assert cli.json("round", "abort", other["experiment_id"])["state"] == "aborted"
    assert "No model versions yet" in cli.ok("models", "list", "--experiment", eid).stdout
    human_list = cli.ok("experiment", "list").stdout
    assert eid in human_list and other["experiment_id"] in human_list and "aborted" in human_list

    # the audit log has the reasons
    events = cli.ok("--json", "watch", eid, "--no-follow").json_lines
    # (no worker is online, so the scheduler may also have said why it waits: experiment.waiting)
    lifecycle = [e["kind"] for e in events if e["kind"].startswith("experiment.")]
    assert [kind for kind in lifecycle if kind != "experiment.waiting"] == [
        "experiment.submitted",
        "experiment.started",
        "experiment.paused",
        "experiment.resumed",
        "experiment.aborted",
    ]
    assert cli.json("experiment", "show", eid)["state"] == "aborted"
    assert cluster.target == cli.target


@pytest.mark.parametrize(
    ("args", "exit_code", "stderr_text"),
    [
        (("experiment", "show", "exp-nope"), ExitCode.NOT_FOUND, "exp-nope"),
        (("experiment", "start", "exp-nope"), ExitCode.NOT_FOUND, "exp-nope"),
        (("round", "pause", "exp-nope"), ExitCode.NOT_FOUND, "exp-nope"),
        (("rounds", "exp-nope"), ExitCode.NOT_FOUND, "exp-nope"),
        (("models", "list", "--experiment", "exp-nope"), ExitCode.NOT_FOUND, "exp-nope"),
        (("watch", "exp-nope", "--no-follow"), ExitCode.NOT_FOUND, "exp-nope"),
        (("models", "show", "mv-nope"), ExitCode.NOT_FOUND, "mv-nope"),
        (("models", "export", "mv-nope", "--out", "{tmp}/x"), ExitCode.NOT_FOUND, "mv-nope"),
    ],
)
def test_unknown_ids_exit_3(
    live: tuple[Cluster, Cli], tmp_path: Path, args: tuple[str, ...], exit_code: int, stderr_text: str
) -> None:
    _, cli = live
    result = cli.run("--json", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.exit_code == exit_code, result.stderr
    assert result.stderr.startswith("Error: ") and stderr_text in result.stderr and result.stdout == ""
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            "name: x\nbase_model: {name: m}\ntask: causal-lm\nstages: [{kind: finetune, rounds: 0}]",
            "stages.0.rounds",
        ),
        (spec_yaml(strategy="nope"), "stages.0.strategy.name"),
    ],
    ids=["zero-rounds", "unknown-strategy"],
)
def test_invalid_spec_exits_5_naming_the_field(
    live: tuple[Cluster, Cli], tmp_path: Path, spec: str, field: str
) -> None:
    _, cli = live
    result = cli.run("--json", "experiment", "submit", write_spec(tmp_path, spec), "--start")
    assert result.exit_code == ExitCode.INVALID and field in result.stderr, result.stderr
    assert cli.json("experiment", "list")["experiments"] == []


def test_wrong_state_and_duplicate_site_exit_5(live: tuple[Cluster, Cli], tmp_path: Path) -> None:
    _, cli = live
    eid = cli.json("experiment", "submit", write_spec(tmp_path, spec_yaml(rounds=1, min_sites=1)))[
        "experiment_id"
    ]
    cli.ok("sites", "add", "hospital-a")

    resume = cli.run("experiment", "resume", eid)  # submitted, not paused
    duplicate = cli.run("sites", "add", "hospital-a")

    assert resume.exit_code == ExitCode.INVALID and "submitted" in resume.stderr, resume.stderr
    assert duplicate.exit_code == ExitCode.INVALID and "already exists" in duplicate.stderr, duplicate.stderr


def test_missing_or_wrong_admin_token_exits_6(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path / "data", database_url, admin_token=ADMIN_TOKEN, sites="")
    # more refused calls below than the default failed-authentication limit (10 per minute per address)
    cluster = Cluster(settings.model_copy(update={"auth_failures_per_window": 20}))
    try:
        commands = [
            ("experiment", "list"),
            ("status",),
            ("sites", "add", "intruder"),
            ("watch", "--no-follow"),
            ("models", "export", "mv-any", "--out", str(tmp_path / "out")),
        ]
        for token in (None, "not-the-token"):
            for args in commands:
                result = run_admin(cluster.target, "--json", *args, token=token)
                assert result.exit_code == ExitCode.AUTH, (token, args, result.exit_code, result.stderr)
                assert "admin token" in result.stderr and result.stdout == ""
        # the right token, from the environment, works; nothing was added by the refused calls
        ok = run_admin(cluster.target, "--json", "workers", env={"FEDTUNE_ADMIN_TOKEN": ADMIN_TOKEN})
        assert ok.exit_code == 0 and ok.json == {"workers": []}, ok.stderr
        fresh = run_admin(cluster.target, "--json", "sites", "add", "intruder", token=ADMIN_TOKEN)
        assert fresh.exit_code == 0, fresh.stderr
    finally:
        cluster.stop()


def test_nothing_listening_exits_4() -> None:
    cli = Cli(f"127.0.0.1:{free_port()}", None)
    for args in (("status",), ("experiment", "list"), ("watch", "--no-follow")):
        result = cli.run(*args, timeout=2.0)
        assert result.exit_code == ExitCode.UNAVAILABLE, (args, result.stderr)
        assert "cannot reach the coordinator" in result.stderr
