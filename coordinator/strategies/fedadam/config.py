from pydantic import BaseModel, ConfigDict, Field


class FedAdamConfig(BaseModel):
    """Server Adam (Reddi et al. 2021, Algorithm 2). Defaults follow the paper's recommended ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eta: float = Field(1e-2, gt=0)  # server learning rate
    beta1: float = Field(0.9, ge=0, lt=1)  # first-moment decay
    beta2: float = Field(0.99, ge=0, lt=1)  # second-moment decay
    tau: float = Field(1e-3, gt=0)  # adaptivity: larger tau = closer to FedAvgM
