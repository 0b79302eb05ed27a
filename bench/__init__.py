"""Benchmarks (`python -m bench`), a development tool of the repository: they compare lmgen
with transformers (and llama.cpp), so they live outside the installed package."""
