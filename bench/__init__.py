"""Benchmarks: ``python -m bench.<name> [--quick]`` prints a table and writes
``bench/results/<name>.json``."""
