from pydantic import BaseModel, ConfigDict


class FedAvgConfig(BaseModel):
    """FedAvg has no options: the new global is the example-weighted mean of the sites' weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)
