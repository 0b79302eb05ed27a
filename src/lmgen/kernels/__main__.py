"""`python -m lmgen.kernels`: build the CPU decode kernel now and say whether it is used."""

from __future__ import annotations

from . import available, cache_dir, why_not

if available():
    print(f"lmgen's CPU decode kernel is built ({cache_dir()})")
else:
    print(f"lmgen's CPU decode kernel is not used: {why_not()}; torch's products are")
