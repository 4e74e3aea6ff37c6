from pydantic import BaseModel, ConfigDict, Field


class FedProxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Weight of the client-side proximal term (mu/2) * ||w - w_global||^2 (Li et al. 2020).
    mu: float = Field(0.01, ge=0)
