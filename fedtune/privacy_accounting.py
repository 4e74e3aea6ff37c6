"""Differential-privacy accounting with Google's ``dp-accounting`` (issue 10, docs/privacy.md).

We describe the mechanism; the library does the math. A round of site-level DP-FedAvg (McMahan et al.
2018) is a Gaussian mechanism on the sum of clipped site updates (noise std ``z * clip_norm``, a
site's influence at most ``clip_norm``), applied to a subsample of the sites: each is selected with
probability ``q`` (the stage's selection fraction). Over ``T`` rounds that is
``SelfComposed(PoissonSampled(q, Gaussian(z)), T)``, the event TF Federated and TF Privacy account.
Record-level DP-SGD at a site is the same event with ``q = batch / examples`` and ``T`` local steps.

Caveat, as in McMahan et al. 2018: the selector draws a fixed number of sites, while the accountant
assumes Poisson sampling with the same expected fraction; that is the standard approximation.

Accountants: RDP (``dp_accounting.rdp.RdpAccountant``, fast, slightly loose) or PLD
(``dp_accounting.pld.PLDAccountant``, tighter, slower). Both give an upper bound on epsilon at ``delta``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedtune.errors import ErrorCode, FedtuneError

AccountantKind = Literal["rdp", "pld"]
DEFAULT_DELTA = 1e-5
MAX_ROUNDS_ACCOUNTED = 10**7  # a sanity bound, far beyond any experiment


def _check(noise_multiplier: float, sampling_rate: float, rounds: int) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"noise_multiplier {noise_multiplier} must be >= 0")
    if not 0 < sampling_rate <= 1:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"sampling rate {sampling_rate} must be in (0, 1]")
    if not 0 <= rounds <= MAX_ROUNDS_ACCOUNTED:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"rounds {rounds} must be in [0, {MAX_ROUNDS_ACCOUNTED}]"
        )


def round_event(noise_multiplier: float, sampling_rate: float) -> dp_event.DpEvent:
    """One round: the Gaussian mechanism with multiplier ``z`` on a Poisson ``q``-subsample."""
    gaussian = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1:
        return gaussian
    return dp_event.PoissonSampledDpEvent(sampling_rate, gaussian)


def _accountant(kind: AccountantKind) -> Any:
    if kind == "rdp":
        return rdp_privacy_accountant.RdpAccountant()
    return pld_privacy_accountant.PLDAccountant()


@dataclass
class PrivacyLedger:
    """The rounds an experiment has run, as (noise multiplier, sampling rate) with counts; epsilon of the
    whole, and whether one more round would exceed a budget. Rebuilt from stored rounds after a restart."""

    delta: float = DEFAULT_DELTA
    accountant: AccountantKind = "rdp"
    rounds: Counter[tuple[float, float]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not 0 < self.delta < 1:
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"delta {self.delta} must be in (0, 1)")

    def record(self, noise_multiplier: float, sampling_rate: float, rounds: int = 1) -> None:
        _check(noise_multiplier, sampling_rate, rounds)
        self.rounds[(noise_multiplier, sampling_rate)] += rounds

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before any round, inf if a round had no noise)."""
        return self._epsilon(self.rounds)

    def epsilon_after(self, noise_multiplier: float, sampling_rate: float, rounds: int = 1) -> float:
        """Epsilon if ``rounds`` more rounds ran with these settings."""
        _check(noise_multiplier, sampling_rate, rounds)
        more = Counter(self.rounds)
        more[(noise_multiplier, sampling_rate)] += rounds
        return self._epsilon(more)

    def would_exceed(self, target_epsilon: float, noise_multiplier: float, sampling_rate: float) -> bool:
        """Would opening one more round spend more than ``target_epsilon``?"""
        return self.epsilon_after(noise_multiplier, sampling_rate) > target_epsilon

    def check_next_round(self, target_epsilon: float, noise_multiplier: float, sampling_rate: float) -> None:
        """Refuse (WRONG_STATE) a round that would take the experiment past its budget, saying by how much."""
        after = self.epsilon_after(noise_multiplier, sampling_rate)
        if after > target_epsilon:
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"the privacy budget is spent: {sum(self.rounds.values())} rounds used epsilon "
                f"{self.epsilon():.3f} and one more would reach {after:.3f} > privacy.dp.target_epsilon "
                f"{target_epsilon} (delta {self.delta}); no round is opened. Raise target_epsilon or the "
                "noise multiplier to train further",
            )

    def _epsilon(self, rounds: Counter[tuple[float, float]]) -> float:
        events = [
            dp_event.SelfComposedDpEvent(round_event(z, q), count)
            for (z, q), count in sorted(rounds.items())
            if count
        ]
        if not events:
            return 0.0
        if any(z == 0 for (z, _), count in rounds.items() if count):
            return math.inf
        accountant = _accountant(self.accountant)
        accountant.compose(dp_event.ComposedDpEvent(events))
        return float(accountant.get_epsilon(self.delta))


def dp_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float = DEFAULT_DELTA,
    accountant: AccountantKind = "rdp",
) -> float:
    """Epsilon of ``rounds`` rounds (or DP-SGD steps) of the subsampled Gaussian mechanism at ``delta``."""
    ledger = PrivacyLedger(delta=delta, accountant=accountant)
    ledger.record(noise_multiplier, sampling_rate, rounds)
    return ledger.epsilon()
