"""The LoRA rank this site trains (docs/decisions.md 37): `peft.site_ranks` in the spec, capped by the
worker's `--max-lora-rank`, and the spec the site builds its adapter from at that rank.

A site of rank r_i < r builds a rank-r_i LoRA whose alpha keeps the global scale, starts from the first
r_i components of the global adapter (`slice_to_rank`), and sends its trained factors back at rank r with
the other components as the global had them (`embed_in_global`), so the coordinator sees the round's
layout from every site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.lora_ranks import RANK_AWARE_STRATEGIES, embed_in_global, site_alpha, site_rank, slice_to_rank
from fedtune.spec import ExperimentSpec, LoraSpec


@dataclass(frozen=True)
class SiteLora:
    spec: ExperimentSpec  # what the site builds its model from (peft.r = its rank when lower)
    rank: int | None  # the site's rank when below the global r, else None (nothing to slice or pad)

    def slice(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The global tensors cut to this site's rank (the top components)."""
        return arrays if self.rank is None else slice_to_rank(arrays, self.rank)

    def embed(
        self, arrays: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Trained tensors in the global layout; the components the site did not train as the global's."""
        return arrays if self.rank is None else embed_in_global(arrays, global_arrays)

    def metrics(self) -> dict[str, float]:
        if not isinstance(self.spec.peft, LoraSpec):
            return {}
        return {"lora_rank": float(self.spec.peft.r)}


def site_lora(spec: ExperimentSpec, stage_index: int, site: str, max_rank: int | None) -> SiteLora:
    """The site's LoRA for a finetune / personalize stage (a global stage keeps its own LoRA)."""
    peft = spec.peft
    if not isinstance(peft, LoraSpec) or spec.stages[stage_index].kind == "global":
        return SiteLora(spec, None)
    rank = site_rank(peft.r, peft.site_ranks, site, max_rank)
    if rank == peft.r:
        return SiteLora(spec, None)
    strategy = spec.stages[stage_index].strategy.name
    if (
        spec.stages[stage_index].kind == "finetune"
        and not peft.freeze_a
        and strategy not in RANK_AWARE_STRATEGIES
    ):
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"this worker trains LoRA rank at most {max_rank} (--max-lora-rank) but the experiment's "
            f"peft.r is {peft.r} and strategy {strategy} needs every site at that rank; use strategy "
            f"{sorted(RANK_AWARE_STRATEGIES)[0]} (or peft.freeze_a: true) or raise --max-lora-rank",
        )
    alpha = site_alpha(peft.alpha, rank, peft.r, peft.use_rslora)
    site_peft = peft.model_copy(update={"r": rank, "alpha": alpha, "site_ranks": None})
    return SiteLora(spec.model_copy(update={"peft": site_peft}), rank)


__all__ = ["SiteLora", "site_lora"]
