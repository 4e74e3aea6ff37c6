from coordinator.strategies.fedavg.strategy import FedAvg

__all__ = ["FedAvg"]
