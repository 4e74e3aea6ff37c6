from coordinator.strategies.fedavg_adaptive.strategy import FedAvgAdaptive

__all__ = ["FedAvgAdaptive"]
