from typing import Literal

from pydantic import BaseModel, ConfigDict


class HeteroLoraConfig(BaseModel):
    """How the exact mean update sum_i w_i B_i A_i is re-factorised to the global rank r.

    stack: FLoRA's stacking of the sites' factors, then a thin QR of each stack and an SVD of the small
    core; memory O((d + k) * sum r_i) per layer, reads each site's spooled update at the round's end.
    svd: FlexLoRA's dense mean ΔW (d x k, a float64 file folded site by site), then a truncated SVD;
    memory O(d * k) per layer. Both give the same adapter (docs/decisions.md 37 has the measurements).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["stack", "svd"] = "stack"
