"""Which sites take part in a round: a pure function of the online sites and the stage's selection."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from fedtune.spec import SelectionSpec


def eligible_sites(online: Sequence[str], selection: SelectionSpec) -> list[str]:
    """Online sites, restricted to `selection.sites` when given; sorted, no duplicates."""
    names = sorted(set(online))
    if selection.sites is not None:
        allowed = set(selection.sites)
        names = [n for n in names if n in allowed]
    return names


def select_sites(
    online: Sequence[str], selection: SelectionSpec, seed: int, round_number: int
) -> list[str] | None:
    """The sites for a round, or None when fewer than `min_sites` are eligible (wait and retry).

    `fraction` mode samples ceil(fraction x eligible) sites (at least min_sites) with a generator
    seeded by the experiment seed and round, so a restarted coordinator picks the same sites.
    """
    names = eligible_sites(online, selection)
    if len(names) < selection.min_sites:
        return None
    if selection.mode == "all":
        return names
    count = min(len(names), max(selection.min_sites, math.ceil(selection.fraction * len(names))))
    rng = random.Random(seed * 1_000_003 + round_number)
    return sorted(rng.sample(names, count))
