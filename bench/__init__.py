"""Quality benchmarks: federated strategies vs centralized vs local-only training (`fedtune bench`)."""
