from coordinator.strategies.fedadam.strategy import FedAdam

__all__ = ["FedAdam"]
