from coordinator.strategies.fedprox.strategy import FedProx

__all__ = ["FedProx"]
