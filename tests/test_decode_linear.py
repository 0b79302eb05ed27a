"""decode_linear.py: the thread-split decode products against F.linear, and the relayout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmgen.checkpoint import state_dict_to_hf
from lmgen.decode_linear import MAX_ROWS, DecodeLinear, _split_views, relayout_for_decode
from lmgen.model import GPT, GPTConfig


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _linear(in_f, out_f, bias, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        if bias:
            lin.bias.normal_()
    return lin


SHAPES = [(24, 48), (48, 24), (32, 32), (24, 97), (33, 66), (35, 21), (7, 9)]


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("in_f", "out_f"), SHAPES)
@pytest.mark.parametrize("relayout", [False, True])
def test_split_product_equals_f_linear(in_f, out_f, bias, relayout, threads):
    lin = _linear(in_f, out_f, bias)
    reference = lin.weight.detach().clone()
    if relayout:
        relayout_for_decode(lin)
    assert torch.equal(lin.weight, reference)
    fn = DecodeLinear(lin)
    for shape in [(1, in_f), (3, in_f), (2, 1, in_f), (2, 3, in_f), (MAX_ROWS + 1, in_f)]:
        x = torch.randn(shape)
        want = F.linear(x, reference, lin.bias)
        with torch.no_grad():
            got = fn(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_each_split_kind_is_used_where_the_layout_allows():
    wide = _linear(24, 48, True)
    relayout_for_decode(wide)
    assert wide.weight.stride() == (1, 48)  # stored (in, out)
    assert _split_views(wide.weight, wide.bias, 2)[0] == "out"
    odd_out = _linear(24, 97, True)
    relayout_for_decode(odd_out)
    assert _split_views(odd_out.weight, odd_out.bias, 2)[0] == "in"
    narrow = _linear(48, 24, True)
    relayout_for_decode(narrow)
    assert narrow.weight.is_contiguous()  # out < in keeps (out, in)
    assert _split_views(narrow.weight, narrow.bias, 2)[0] == "out"
    assert _split_views(_linear(48, 21, True).weight, None, 2) is None


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_the_split_sees_new_weights(threads):
    """Views are cached per weight storage: load_state_dict and .to() are seen."""
    lin = _linear(24, 48, True)
    relayout_for_decode(lin)
    fn = DecodeLinear(lin)
    x = torch.randn(1, 24)
    with torch.no_grad():
        fn(x)
        lin.load_state_dict(_linear(24, 48, True, seed=5).state_dict())
        torch.testing.assert_close(fn(x), lin(x), atol=1e-5, rtol=1e-5)
        lin.double()
        xd = x.double()
        torch.testing.assert_close(fn(xd), F.linear(xd, lin.weight, lin.bias))


def test_relayout_keeps_values_state_dict_and_tied_head():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4)).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    hf_before = state_dict_to_hf(m)
    relayout_for_decode(m)
    assert m.lm_head.weight is m.wte.weight
    assert m.wte.weight.stride() == (1, 97)  # the tied head is stored (in, out)
    assert m.h[0].mlp.c_fc.weight.stride() == (1, 128)
    assert m.h[0].mlp.c_proj.weight.is_contiguous()
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    hf_after = state_dict_to_hf(m)
    assert all(torch.equal(hf_before[k], hf_after[k]) and hf_after[k].is_contiguous()
               for k in hf_before)
