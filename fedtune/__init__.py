"""fedtune: federated fine-tuning of foundation models across institutions."""

__version__ = "0.1.0"
