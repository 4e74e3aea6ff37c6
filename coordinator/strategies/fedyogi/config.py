from coordinator.strategies.fedadam.config import FedAdamConfig


class FedYogiConfig(FedAdamConfig):
    """Same options as FedAdam (Reddi et al. 2021 tune them over the same ranges)."""
