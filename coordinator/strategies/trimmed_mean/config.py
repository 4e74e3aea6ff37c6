from pydantic import BaseModel, ConfigDict, Field


class TrimmedMeanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # fraction of sites dropped at EACH end per coordinate: k = floor(trim_fraction * sites)
    trim_fraction: float = Field(0.1, ge=0, lt=0.5)
