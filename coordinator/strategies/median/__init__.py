from coordinator.strategies.median.strategy import CoordinateMedian

__all__ = ["CoordinateMedian"]
