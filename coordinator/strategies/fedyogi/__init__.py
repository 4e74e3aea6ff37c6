from coordinator.strategies.fedyogi.strategy import FedYogi

__all__ = ["FedYogi"]
