"""Benchmarks on the shared inference layer; each has a thin entry point at upstream's path under evaluation/."""
