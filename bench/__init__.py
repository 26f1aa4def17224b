"""Benchmarks: not tests; they print measured numbers and ratios, and never gate CI."""
