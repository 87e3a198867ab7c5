"""Speed and size: the benchmark engine behind ``tools/benchmark.py`` and the FLOP / parameter counts
behind ``tools/complexity.py``."""
