from pydantic import BaseModel, ConfigDict, Field


class FedAdagradConfig(BaseModel):
    """Server Adagrad (Reddi et al. 2021): no beta2, the second moment only accumulates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eta: float = Field(1e-2, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
