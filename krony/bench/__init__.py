"""Benchmarks: `python -m krony.bench layer|model|data` (see `krony.bench.__main__`)."""
