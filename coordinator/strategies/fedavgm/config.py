from pydantic import BaseModel, ConfigDict, Field


class FedAvgMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
