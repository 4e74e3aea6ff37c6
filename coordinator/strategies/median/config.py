from pydantic import BaseModel, ConfigDict


class MedianConfig(BaseModel):
    """Coordinate-wise median has no options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
