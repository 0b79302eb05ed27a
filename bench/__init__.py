"""Benchmarks (`python -m bench`): a thin entry over `lmgen.benchmark`, which holds the code so
that `lmgen bench` works from an installed package too."""
