from coordinator.strategies.trimmed_mean.strategy import TrimmedMean

__all__ = ["TrimmedMean"]
