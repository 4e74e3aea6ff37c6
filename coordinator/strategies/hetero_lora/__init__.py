from coordinator.strategies.hetero_lora.strategy import HeteroLora

__all__ = ["HeteroLora"]
