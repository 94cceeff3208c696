"""Load generator, benchmark driver and baselines (benchmarks, not tests: nothing is asserted)."""
