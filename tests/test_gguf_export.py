"""lmgen.gguf_export and `lmgen export-gguf`: the file read back by gguf's own reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmgen.errors import ConfigError
from lmgen.gguf_export import write_gguf
from lmgen.model import GPT, GPTConfig

gguf = pytest.importorskip("gguf")


def _model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, n_positions=16, n_embd=8, n_layer=2, n_head=2, **kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gguf_holds_the_weights_under_llama_cpp_names(tmp_path, dtype):
    m = _model()
    path = write_gguf(m, tmp_path / "m.gguf", dtype)
    r = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in r.fields.values()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "gpt2"
    assert int(fields["gpt2.block_count"].parts[-1][0]) == 2
    assert int(fields["gpt2.embedding_length"].parts[-1][0]) == 8
    assert int(fields["gpt2.feed_forward_length"].parts[-1][0]) == 32
    assert len(fields["tokenizer.ggml.tokens"].data) == 50
    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert len(tensors) == 4 + 2 * 12
    sd = m.state_dict()
    pairs = {
        "token_embd.weight": "wte.weight",
        "blk.1.attn_qkv.weight": "h.1.attn.c_attn.weight",
        "blk.0.ffn_down.weight": "h.0.mlp.c_proj.weight",
        "blk.1.ffn_up.bias": "h.1.mlp.c_fc.bias",
        "output_norm.bias": "ln_f.bias",
        "position_embd.weight": "wpe.weight",
    }
    for theirs, ours in pairs.items():
        t = tensors[theirs]
        want = sd[ours].float()
        if want.dim() == 2 and theirs != "position_embd.weight":
            want = want.to(dtype)
        got = np.asarray(t.data).reshape(want.shape)
        assert np.array_equal(got, want.numpy()), theirs


def test_untied_head_and_refusals(tmp_path):
    m = _model(tie_word_embeddings=False)
    r = gguf.GGUFReader(str(write_gguf(m, tmp_path / "u.gguf")))
    assert "output.weight" in {t.name for t in r.tensors}
    with pytest.raises(ConfigError, match="float32 and float16"):
        write_gguf(m, tmp_path / "x.gguf", torch.bfloat16)
    with pytest.raises(ConfigError, match="tanh GELU"):
        write_gguf(_model(activation_function="relu"), tmp_path / "y.gguf")


def test_without_the_gguf_package_the_error_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # unimportable
    with pytest.raises(ConfigError, match=r"pip install gguf \(or lmgen\[gguf\]\)"):
        write_gguf(_model(), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
