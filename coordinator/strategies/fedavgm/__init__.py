from coordinator.strategies.fedavgm.strategy import FedAvgM

__all__ = ["FedAvgM"]
