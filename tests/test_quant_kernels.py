"""lmgen.kernels.quant (ggml blocks x int8-quantized activations) against closed forms: the
gguf package's reference dequantizer, and the product of the dequantized weight with the
activation as the kernel quantizes it (blocks of 32, scale max|x| / 127, round half to even),
computed in float64; each row's result the same bits alone or among others."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmgen.ggml_blocks import (
    BLOCKS,
    QuantTensor,
    deinterleave_q4_0,
    interleave_q4_0,
    quantize_q4_0,
    reference_dequantize,
)
from lmgen.kernels import quant
from lmgen.quantize import GEMV_ROWS, QuantLinear

gguf = pytest.importorskip("gguf")
needs_kernel = pytest.mark.skipif(not quant.available(), reason="the quant kernel does not build")
needs_gemm = pytest.mark.skipif(not quant.has_gemm(), reason="no AVX512-VNNI build of the GEMM")
KINDS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K"]


def random_blocks(kind: str, out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """Blocks of `kind` for an (out, inp) weight: random bytes, with finite, moderate fp16
    scales (Q8_0 / Q4_0 / Q4_1 through gguf's quantizer of a random weight)."""
    rng = np.random.default_rng(seed)
    qtype = gguf.GGMLQuantizationType[kind]
    if kind != "Q4_K":
        w = rng.standard_normal((out, inp)).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(gguf.quants.quantize(w, qtype)))
    per, size = BLOCKS[kind]
    raw = rng.integers(0, 256, (out, inp // per, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.02, (out, inp // per, 2)).astype(np.float16)
    raw[:, :, :4] = scales.view(np.uint8)  # d, dmin
    return torch.from_numpy(raw.reshape(out, -1).copy())


def quantized_activation(x: torch.Tensor) -> torch.Tensor:
    """x as the kernel sees it: int8 blocks of 32 times their scale, in float64."""
    b = x.double().reshape(x.shape[0], -1, 32)
    amax = b.abs().amax(dim=2, keepdim=True).float().double()
    d = (amax.float() / 127).double()
    inv = torch.where(amax > 0, (127 / amax.float()).double(), torch.zeros_like(amax))
    q = torch.round((b.float() * inv.float()).double())  # round half to even, as the kernel
    return (q * d).reshape(x.shape)


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_equals_ggmls_reference(kind):
    blocks = random_blocks(kind, 48, 512)
    ours = quant.dequantize(blocks, kind, 512)
    assert torch.equal(ours, reference_dequantize(blocks, kind, 512))


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "product, rows",
    [*(("gemv", n) for n in (1, 2, 4, 5)),
     *(pytest.param("gemm", n, marks=needs_gemm) for n in (17, 40))],
)  # fmt: skip
def test_product_equals_closed_form(kind, product, rows):
    """The row kernel (a decode step's rows) and the prompt GEMM (40 outputs for the GEMM: two
    whole tiles of 16 and a part of one) against the dequantized weight times the activation
    rounded to int8 blocks, in float64."""
    out, inp = 40, 768
    blocks = random_blocks(kind, out, inp, seed=rows)
    w = reference_dequantize(blocks, kind, inp).double()
    torch.manual_seed(rows)
    x = torch.randn(rows, inp) * torch.rand(rows, 1) * 3
    bias = torch.randn(out)
    want = quantized_activation(x) @ w.T + bias.double()
    got = getattr(quant, product)(x, blocks, kind, bias)
    assert (got.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_a_rows_result_does_not_depend_on_the_other_rows(kind):
    blocks = random_blocks(kind, 24, 256)
    torch.manual_seed(0)
    x = torch.randn(9, 256)
    alone = torch.cat([quant.gemv(x[i : i + 1], blocks, kind) for i in range(9)])
    for n in range(1, 10):
        assert torch.equal(quant.gemv(x[:n], blocks, kind), alone[:n]), n
    assert torch.equal(quant.gemv(x.flip(0), blocks, kind), alone.flip(0))


@needs_gemm
@pytest.mark.parametrize("kind", KINDS)
def test_gemm_rows_result_does_not_depend_on_the_other_rows(kind):
    blocks = random_blocks(kind, 40, 256)
    torch.manual_seed(1)
    x = torch.randn(23, 256)
    every = quant.gemm(x, blocks, kind)
    for n in range(1, 23):
        assert torch.equal(quant.gemm(x[:n], blocks, kind), every[:n]), n
    assert torch.equal(quant.gemm(x.flip(0), blocks, kind), every.flip(0))
    assert torch.equal(quant.gemm(x[5:], blocks, kind), every[5:])


@needs_gemm
def test_gemm_quantizes_activations_as_the_row_product_does():
    """A Q8_0 identity (scale 1, one q = 1 per row) gives each activation exactly as the kernel
    rounds it: the GEMM's vectorized rounding has the bits of the row product's (and of the
    closed form: round half to even of x * 127 / max|x|)."""
    n = 64
    raw = np.zeros((n, n // 32, 34), dtype=np.uint8)
    raw[:, :, :2] = np.array([1.0], dtype=np.float16).view(np.uint8)
    for o in range(n):
        raw[o, o // 32, 2 + o % 32] = 1
    blocks = torch.from_numpy(raw.reshape(n, -1).copy())
    torch.manual_seed(2)
    x = torch.randn(20, n) * 5
    x[3, :32] = 0  # an all-zero block: scale 0
    x[4, :32] = torch.tensor([127.0, 2.5, 3.5, -2.5, -0.5, 0.5] + [1.0] * 26)  # scale 1:
    # half-way values, rounded to even (2, 4, -2, 0, 0)
    want = quantized_activation(x).float()
    assert torch.equal(quant.gemm(x, blocks, "Q8_0"), want)
    assert torch.equal(quant.gemv(x, blocks, "Q8_0"), want)


def test_interleaved_q4_0_moves_the_bytes_and_puts_them_back():
    blocks = random_blocks("Q4_0", 24, 96)
    held = interleave_q4_0(blocks)
    assert not torch.equal(held, blocks)
    assert sorted(held.flatten().tolist()) == sorted(blocks.flatten().tolist())
    assert torch.equal(deinterleave_q4_0(held), blocks)
    # row 9 (group 1, lane 1), block 2: its scale, then its quant bytes 4c..4c+3 in chunk c
    group, blk = held.reshape(3, 8, 3 * 18)[1].flatten(), blocks[9, 2 * 18 : 3 * 18]
    at = 2 * 144
    assert torch.equal(group[at + 2 : at + 4], blk[:2])
    for c in range(4):
        chunk = at + 16 + 32 * c + 4
        assert torch.equal(group[chunk : chunk + 4], blk[2 + 4 * c : 6 + 4 * c])


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_interleaved_q4_0_products_have_the_file_layouts_bits(threads):
    """The one-row product (and the GEMM) of Q4_0x8 is the file layout's, bit for bit, for any
    rows and any split of the outputs between threads (40 outputs: ranges inside groups)."""
    blocks = random_blocks("Q4_0", 40, 512, seed=4)
    held = interleave_q4_0(blocks)
    torch.manual_seed(4)
    x = torch.randn(6, 512) * 2
    bias = torch.randn(40)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in range(1, 7):
            want = quant.gemv(x[:n], blocks, "Q4_0", bias)
            assert torch.equal(quant.gemv(x[:n], held, "Q4_0x8", bias), want), n
        if quant.has_gemm():
            assert torch.equal(quant.gemm(x, held, "Q4_0x8"), quant.gemm(x, blocks, "Q4_0"))
    finally:
        torch.set_num_threads(saved)


@needs_kernel
def test_quant_linear_holds_q4_0_interleaved_and_gives_the_files_blocks_back():
    blocks = random_blocks("Q4_0", 32, 256)
    odd = random_blocks("Q4_0", 12, 256, seed=1)  # not whole groups of 8: kept as it is
    layer = QuantLinear([QuantTensor("Q4_0", blocks, 256), QuantTensor("Q4_0", odd, 256)], None)
    assert layer.kinds == ["Q4_0x8", "Q4_0"]
    got = layer.parts()
    assert [p.kind for p in got] == ["Q4_0", "Q4_0"]
    assert torch.equal(got[0].blocks, blocks) and torch.equal(got[1].blocks, odd)
    x = torch.randn(3, 256)
    assert torch.equal(layer(x), torch.cat([quant.gemv(x, blocks, "Q4_0"),
                                            quant.gemv(x, odd, "Q4_0")], dim=1))  # fmt: skip


def test_q4_0_quantizer_writes_ggmls_bytes():
    torch.manual_seed(0)
    w = torch.randn(16, 256)
    w[0, :32] = 0  # an all-zero block: scale 0
    w[1, 5] = 40.0  # a large negative and positive extreme
    w[2, 7] = -40.0
    ours = quantize_q4_0(w)
    want = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0)
    assert ours.blocks.numpy().tobytes() == np.ascontiguousarray(want).tobytes()


@pytest.mark.parametrize("rows", [1, 3, 7, 16, 40])
def test_quant_linear_paths_agree(monkeypatch, rows):
    """QuantLinear by the kernel (few rows), by torch's GEMM on the dequantized weight (many
    rows: the block GEMM where it is built) and by the gguf package's dequantizer (no kernel):
    all the dequantized product, to the activation's 8-bit rounding where a kernel quantizes
    it."""
    torch.manual_seed(0)
    parts = [
        QuantTensor("Q4_1", random_blocks("Q4_1", 32, 256), 256),
        torch.randn(8, 256) * 0.05,  # a float part (a Q6_K tensor of a Q4_K_M file)
        QuantTensor("Q4_K", random_blocks("Q4_K", 16, 256), 256),
    ]
    layer = QuantLinear(parts, torch.randn(56))
    x = torch.randn(rows, 256)
    w = torch.cat([reference_dequantize(p.blocks, p.kind, 256) if hasattr(p, "kind") else p
                   for p in parts])  # fmt: skip
    want = x.double() @ w.double().T + layer.bias.double()
    got = layer(x)
    quantized = quant.available() and (rows <= GEMV_ROWS or quant.has_gemm())
    tol = 3e-2 if quantized else 1e-5
    assert (got.double() - want).abs().max() <= tol * want.abs().max()
    monkeypatch.setattr(quant, "available", lambda: False)
    fallback = QuantLinear(parts, layer.bias)(x)
    assert (fallback.double() - want).abs().max() <= 1e-5 * want.abs().max()
