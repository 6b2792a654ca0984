"""Benchmarks of the RTFSyn node and model (see docs/PERFORMANCE.md)."""
