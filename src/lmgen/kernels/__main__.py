"""`python -m lmgen.kernels`: build lmgen's CPU kernels now (the decode step's, decode.cpp, and
the quantized-weight products', quant.cpp, which GGUF files with blocks use) and say whether
each is used."""

from __future__ import annotations

from . import available, cache_dir, quant, why_not

if available():
    print(f"lmgen's CPU decode kernel is built ({cache_dir()})")
else:
    print(f"lmgen's CPU decode kernel is not used: {why_not()}; torch's products are")
if quant.available():
    print(f"lmgen's quantized-weight kernel is built ({quant.integer_dot()} integer dots)")
else:
    print(f"lmgen's quantized-weight kernel is not used: {quant.why_not()}; blocks are dequantized")
