"""The experiment's privacy ledger, rebuilt from stored rounds, and the budget (decision 36).

Site level: each committed round of a stage that releases a model records its noise multiplier and
sampling rate in its metrics (`privacy.noise_multiplier`, `privacy.sampling_rate`: selected sites over
eligible online sites, stored when the round opens); the ledger composes them
(fedtune/privacy_accounting.py). Record level: each site's DP-SGD run reports dp_noise_multiplier,
dp_sample_rate and dp_steps (worker/dp_sgd.py); a per-site ledger composes that site's runs over the
committed rounds, and the experiment's figure is the largest site's epsilon.

The budget (`privacy.dp.target_epsilon`): before a round opens, the coordinator asks whether the round
would take epsilon past it (record level: with each selected site's last run as the estimate of its
next; a site with no run yet cannot be predicted and is let through). If so, no round opens: the
experiment ends (completed, with its latest model) and a `privacy.budget_spent` event says why.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from coordinator.lifecycle.experiments import PRIVACY_BUDGET_EVENT
from fedtune.errors import FedtuneError
from fedtune.privacy_accounting import AccountantKind, PrivacyLedger
from fedtune.serde import PrivacySpentRecord
from fedtune.spec import DpSpec, ExperimentSpec
from storage import models
from storage.states import RoundState
from storage.uow import UnitOfWork

NOISE_MULTIPLIER = "privacy.noise_multiplier"
SAMPLING_RATE = "privacy.sampling_rate"
EPSILON = "privacy.epsilon"
DELTA = "privacy.delta"
_PAGE = 1000


@dataclass(frozen=True)
class SiteRun:
    """One site's DP-SGD run as it reported it."""

    noise_multiplier: float
    sample_rate: float
    steps: int


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(
    rounds: tuple[tuple[tuple[float, float], int], ...], delta: float, accountant: AccountantKind
) -> float:
    ledger = PrivacyLedger(delta=delta, accountant=accountant)
    for (z, q), count in rounds:
        ledger.record(z, q, count)
    return ledger.epsilon()


def epsilon_of(ledger: PrivacyLedger, more: tuple[float, float, int] | None = None) -> float:
    """The ledger's epsilon (with `more` = (z, q, count) added), memoised by content: a ledger changes
    only when a round commits, while admin reads ask for it often (RDP ~0.4 s, PLD seconds)."""
    rounds = Counter(ledger.rounds)
    if more is not None:
        rounds[(more[0], more[1])] += more[2]
    key = tuple(sorted((zq, count) for zq, count in rounds.items() if count))
    return _cached_epsilon(key, ledger.delta, ledger.accountant)


def _committed_rounds(uow: UnitOfWork, experiment_id: str) -> Iterator[models.Round]:
    offset = 0
    while True:
        page = uow.rounds.page(experiment_id, offset, _PAGE)
        yield from (rnd for rnd in page if rnd.state == RoundState.COMMITTED)
        if len(page) < _PAGE:
            return
        offset += _PAGE


def site_run(metrics: dict[str, float]) -> SiteRun | None:
    try:
        return SiteRun(
            float(metrics["dp_noise_multiplier"]), float(metrics["dp_sample_rate"]), int(metrics["dp_steps"])
        )
    except (KeyError, TypeError, ValueError):
        return None


def _ledger(dp: DpSpec) -> PrivacyLedger:
    return PrivacyLedger(delta=dp.delta, accountant=dp.accountant)


def site_ledger(uow: UnitOfWork, experiment_id: str, dp: DpSpec) -> PrivacyLedger:
    """Site level: one (z, q) per committed round that recorded them."""
    ledger = _ledger(dp)
    for rnd in _committed_rounds(uow, experiment_id):
        if NOISE_MULTIPLIER in rnd.metrics and SAMPLING_RATE in rnd.metrics:
            ledger.record(float(rnd.metrics[NOISE_MULTIPLIER]), float(rnd.metrics[SAMPLING_RATE]))
    return ledger


def record_ledgers(
    uow: UnitOfWork, experiment_id: str, dp: DpSpec, extra_round: str | None = None
) -> tuple[dict[str, PrivacyLedger], dict[str, SiteRun]]:
    """Record level: each site's ledger over its runs in committed rounds (and in `extra_round`, the
    round being committed), and each site's last run."""
    ledgers: dict[str, PrivacyLedger] = {}
    last: dict[str, SiteRun] = {}
    round_ids = [rnd.id for rnd in _committed_rounds(uow, experiment_id)]
    if extra_round is not None:
        round_ids.append(extra_round)
    for round_id in round_ids:
        for update, site in uow.rounds.foldable_updates(round_id, by_site=True):
            run = site_run(dict(update.metrics))
            if run is None:
                continue
            ledgers.setdefault(site, _ledger(dp)).record(run.noise_multiplier, run.sample_rate, run.steps)
            last[site] = run
    return ledgers, last


def round_privacy_metrics(uow: UnitOfWork, rnd: models.Round, spec: ExperimentSpec) -> dict[str, float]:
    """The privacy figures a committing round stores: its (z, q) at site level, and epsilon spent with
    this round included (record level: the largest site's), at delta."""
    dp = spec.privacy.dp
    if dp is None:
        return {}
    if dp.level == "site":
        z, q = (
            float(rnd.metrics.get(NOISE_MULTIPLIER, dp.noise_multiplier)),
            float(rnd.metrics.get(SAMPLING_RATE, 1.0)),
        )
        epsilon = epsilon_of(site_ledger(uow, rnd.experiment_id, dp), (z, q, 1))
        return {NOISE_MULTIPLIER: z, SAMPLING_RATE: q, EPSILON: epsilon, DELTA: dp.delta}
    ledgers, _ = record_ledgers(uow, rnd.experiment_id, dp, extra_round=rnd.id)
    epsilon = max((epsilon_of(ledger) for ledger in ledgers.values()), default=0.0)
    return {EPSILON: epsilon, DELTA: dp.delta}


def next_round_refusal(
    uow: UnitOfWork, experiment_id: str, spec: ExperimentSpec, chosen: list[str], sampling_rate: float
) -> str | None:
    """Why the next round must not open (it would pass target_epsilon), or None."""
    dp = spec.privacy.dp
    if dp is None or dp.target_epsilon is None:
        return None
    if dp.level == "site":
        ledger = site_ledger(uow, experiment_id, dp)
        if epsilon_of(ledger, (dp.noise_multiplier, sampling_rate, 1)) <= dp.target_epsilon:
            return None
        try:  # its message says how far past the budget the round would go
            ledger.check_next_round(dp.target_epsilon, dp.noise_multiplier, sampling_rate)
        except FedtuneError as err:
            return err.message
        return None
    ledgers, last = record_ledgers(uow, experiment_id, dp)
    for site in sorted(chosen):
        if site not in ledgers:
            continue
        run = last[site]
        after = epsilon_of(ledgers[site], (run.noise_multiplier, run.sample_rate, run.steps))
        if after > dp.target_epsilon:
            return (
                f"the privacy budget is spent: site {site} has used epsilon {epsilon_of(ledgers[site]):.3f} "
                f"and one more round like its last ({run.steps} DP-SGD steps at sampling rate "
                f"{run.sample_rate:.4g}) would reach {after:.3f} > privacy.dp.target_epsilon "
                f"{dp.target_epsilon} (delta {dp.delta}); no round is opened"
            )
    return None


def privacy_status(uow: UnitOfWork, experiment_id: str, spec: ExperimentSpec) -> PrivacySpentRecord | None:
    """The (epsilon, delta) spent so far, the budget, and whether it stopped the experiment."""
    dp = spec.privacy.dp
    if dp is None:
        return None
    budget = uow.events.latest_of_kinds(experiment_id, (PRIVACY_BUDGET_EVENT,))
    spent = str(budget.data.get("reason", budget.message)) if budget is not None else ""
    if dp.level == "site":
        ledger = site_ledger(uow, experiment_id, dp)
        epsilon, rounds, per_site = epsilon_of(ledger), sum(ledger.rounds.values()), {}
    else:
        ledgers, _ = record_ledgers(uow, experiment_id, dp)
        per_site = {site: epsilon_of(ledger) for site, ledger in sorted(ledgers.items())}
        epsilon = max(per_site.values(), default=0.0)
        rounds = sum(1 for rnd in _committed_rounds(uow, experiment_id) if rnd.model_version_id)
    return PrivacySpentRecord(
        level=dp.level,
        epsilon=epsilon,
        delta=dp.delta,
        target_epsilon=dp.target_epsilon or 0.0,
        accountant=dp.accountant,
        rounds=rounds,
        budget_spent=spent,
        site_epsilons=per_site,
    )
