"""Benchmarks and controlled test beds (one-state bandits, speed and learning benchmarks)."""
