"""The site-level DP mechanism (DP-FedAvg, McMahan et al. 2018) in numpy: who adds the noise, and a
site's clip (+ its share of the noise). Shared by the worker (clip, split noise) and the coordinator
(noise on the sum); the accounting is in fedtune/privacy_accounting.py.

A round's sum of site updates, each clipped to ``clip_norm`` in L2 and weighted 1, gets Gaussian noise
of standard deviation ``noise_multiplier * clip_norm``. Without secure aggregation the coordinator adds
it to the sum it sees. With secure aggregation nobody may see an un-noised sum, so each of the round's
``n`` selected sites adds N(0, (z C)^2 / n) to its clipped update before encoding: the sum of n such
draws has the full variance (z C)^2 when every selected site reports (a site that drops out takes
its share with it: the surviving sum has (z C)^2 * survivors / n, docs/privacy.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import DpSpec, PrivacySpec


@dataclass(frozen=True)
class SiteNoise:
    """Standard deviations of the Gaussian noise of one site-level DP round."""

    per_site_std: float  # each site adds this to its clipped update (secure aggregation), else 0
    sum_std: float  # the coordinator adds this to the sum of the updates, else 0


def site_noise(dp: DpSpec, secure_aggregation: bool, sites_in_round: int) -> SiteNoise:
    """Who adds the noise of a site-level round: the coordinator (on the sum) or, with secure
    aggregation, each of the ``sites_in_round`` selected sites its 1/n share of the variance."""
    if dp.level != "site":
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"site_noise is for level site, not {dp.level}")
    total = dp.noise_multiplier * dp.clip_norm
    if not secure_aggregation:
        return SiteNoise(per_site_std=0.0, sum_std=total)
    if sites_in_round < 1:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"a round has at least one site, not {sites_in_round}")
    return SiteNoise(per_site_std=total / math.sqrt(sites_in_round), sum_std=0.0)


def clip_and_noise(
    deltas: dict[str, np.ndarray], clip_norm: float, noise_std: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], float]:
    """The deltas scaled to L2 norm at most ``clip_norm`` (all tensors together) plus N(0, noise_std^2)
    per element, in float64; and the norm before clipping (never to be reported with noise on)."""
    norm = math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in deltas.values()))
    scale = min(1.0, clip_norm / max(norm, 1e-12))
    out = {}
    for name, delta in deltas.items():
        clipped = delta.astype(np.float64) * scale
        if noise_std > 0:
            clipped += rng.normal(0.0, noise_std, size=delta.shape)
        out[name] = clipped
    return out, norm


def secure_rng() -> np.random.Generator:
    """A generator seeded from the OS's entropy: DP noise must not follow from a spec's seed."""
    return np.random.default_rng()


def round_noise(privacy: PrivacySpec, sites_in_round: int) -> SiteNoise | None:
    """The noise of a round under site-level ``privacy.dp`` (None without it): the coordinator's part
    is ``sum_std``, zero when the sites add theirs (secure aggregation)."""
    dp = privacy.dp
    if dp is None or dp.level != "site":
        return None
    return site_noise(dp, privacy.secure_aggregation, sites_in_round)
