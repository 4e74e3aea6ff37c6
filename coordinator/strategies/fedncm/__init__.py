from coordinator.strategies.fedncm.strategy import FedNCM

__all__ = ["FedNCM"]
