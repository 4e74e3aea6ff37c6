from coordinator.strategies.fedadagrad.strategy import FedAdagrad

__all__ = ["FedAdagrad"]
