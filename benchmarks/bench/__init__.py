"""The pieces of `make bench` (benchmarks/run.py) and of the scenario scripts beside it."""
