"""Benchmarks and synthetic data for meterway; not part of the installed gateway."""
