"""bfloat16 weights' pair products give the same bits in every build of the decode kernel: with
AVX512-BF16's vdpbf16ps, with two FMAs a pair on 512-bit vectors, and on 8-lane AVX2 vectors
(decode.cpp, "bfloat16 weights: products of bfloat16 pairs"). Each build is compiled in a
subprocess of its own (the op's namespace is one per process): slow."""

import subprocess
import sys

import pytest
import torch

from lmgen import kernels

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not kernels.available(), reason="the decode kernel does not run here"),
]

BUILDS = {
    "as built here": None,
    "512-bit, two FMAs a pair": [*kernels.BASE_FLAGS, *kernels.AVX512_FLAGS],
    "AVX2": kernels.BASE_FLAGS,
}

SCRIPT = """
import sys, torch
import lmgen.kernels as K
flags = {flags!r}
if flags is not None:
    K._FLAGS[:] = flags  # the loader's default flags: this build's instead
assert K.available(), K.why_not()
g = torch.Generator().manual_seed(0)
out = []
for o, i in ((70, 1003), (2304, 768), (7, 40)):  # a scalar tail, a GPT-2 matrix, a small one
    w = torch.randn(o, i, generator=g).bfloat16()
    x = torch.randn(17, i, generator=g)
    out += [K.decode_gemv(x, w, None, None), K.decode_gemv(x[:1], w, None, None)]
torch.save(out, sys.argv[1])
"""


def _run(flags, path) -> list[torch.Tensor]:
    subprocess.run([sys.executable, "-c", SCRIPT.format(flags=flags), str(path)], check=True,
                   timeout=600)  # fmt: skip
    return torch.load(path)


def test_bfloat16_pair_products_have_the_same_bits_in_every_build(tmp_path):
    builds = dict(BUILDS)
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        builds.pop("512-bit, two FMAs a pair")
    results = {n: _run(f, tmp_path / f"{i}.pt") for i, (n, f) in enumerate(builds.items())}
    here = results.pop("as built here")
    for name, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(here, got, strict=True)), name
