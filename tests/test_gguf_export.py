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


def test_q8_0_blocks_hold_each_weight_to_within_a_step(tmp_path):
    # q8_0 (llama.cpp): each run of 32 weights stores round(w / d), d = max|w| / 127, and d in
    # float16; read back by gguf's own dequantizer, every weight is within d/2 of its value,
    # plus 127 times d's float16 rounding (2^-11 d): at most 0.5625 d
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    r = gguf.GGUFReader(str(write_gguf(m, tmp_path / "q.gguf", "q8_0")))
    tensors = {t.name: t for t in r.tensors}
    q8 = gguf.GGMLQuantizationType.Q8_0
    sd = m.state_dict()
    for theirs, ours in {
        "token_embd.weight": "wte.weight",
        "blk.0.attn_qkv.weight": "h.0.attn.c_attn.weight",
        "blk.0.ffn_down.weight": "h.0.mlp.c_proj.weight",
    }.items():
        t = tensors[theirs]
        assert t.tensor_type == q8, theirs
        want = sd[ours].float().numpy()
        got = gguf.quants.dequantize(t.data, q8).reshape(want.shape)
        blocks = want.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127
        err = np.abs(got.reshape(-1, 32) - blocks)
        assert (err <= step * 0.5625 + 1e-8).all(), theirs
        assert err.max() > 0  # it was quantized
    for name in ("position_embd.weight", "blk.0.ffn_up.bias", "output_norm.weight"):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32, name
    with pytest.raises(ConfigError, match="multiples of 32"):
        write_gguf(_model(), tmp_path / "odd.gguf", "q8_0")  # n_embd 8


def test_untied_head_and_refusals(tmp_path):
    m = _model(tie_word_embeddings=False)
    r = gguf.GGUFReader(str(write_gguf(m, tmp_path / "u.gguf")))
    assert "output.weight" in {t.name for t in r.tensors}
    with pytest.raises(ConfigError, match="float32, float16 and q8_0"):
        write_gguf(m, tmp_path / "x.gguf", torch.bfloat16)
    with pytest.raises(ConfigError, match="tanh GELU"):
        write_gguf(_model(activation_function="relu"), tmp_path / "y.gguf")


def test_without_the_gguf_package_the_error_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # unimportable
    with pytest.raises(ConfigError, match=r"pip install gguf \(or lmgen\[gguf\]\)"):
        write_gguf(_model(), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def _field(reader, name):
    f = reader.fields[name]
    if len(f.types) > 1:  # an array: one value per data index
        return [
            bytes(f.parts[i]).decode()
            if f.types[-1] == gguf.GGUFValueType.STRING
            else int(f.parts[i][0])
            for i in f.data
        ]
    return (
        bytes(f.parts[-1]).decode()
        if f.types[0] == gguf.GGUFValueType.STRING
        else int(f.parts[-1][0])
    )


def test_a_bpe_tokenizer_goes_into_the_file(tmp_path, tiny_tokenizer):
    """Tokens in id order, the merges, the special token as CONTROL, eos id and GPT-2's
    pre-tokenizer: what llama.cpp's gpt2 BPE loader reads."""
    import json

    tok = tiny_tokenizer
    m = GPT(GPTConfig(vocab_size=tok.vocab_size + 4, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    r = gguf.GGUFReader(str(write_gguf(m, tmp_path / "t.gguf", tokenizer=tok)))
    tokens = _field(r, "tokenizer.ggml.tokens")
    n = tok.vocab_size
    assert tokens[:n] == [tok.backend.id_to_token(i) for i in range(n)]
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 4)]  # the model's extra rows
    types = _field(r, "tokenizer.ggml.token_type")
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL
    assert types[n:] == [gguf.TokenType.UNUSED] * 4
    assert sum(t == gguf.TokenType.NORMAL for t in types) == n - 1
    merges = json.loads(tok.backend.to_str())["model"]["merges"]
    want = [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert _field(r, "tokenizer.ggml.merges") == want
    assert _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(r, "tokenizer.ggml.model") == "gpt2"


def test_a_word_tokenizer_gets_the_placeholder_vocabulary(tmp_path):
    from lmgen.tokenizers import WordTokenizer

    m = _model()
    tok = WordTokenizer(["a", "b"])
    r = gguf.GGUFReader(str(write_gguf(m, tmp_path / "w.gguf", tokenizer=tok)))
    assert _field(r, "tokenizer.ggml.tokens") == [f"<{i}>" for i in range(50)]
    assert _field(r, "tokenizer.ggml.pre") == "default"


def test_export_gguf_command(tmp_path, tiny_model_dir, capsys):
    import lmgen
    from lmgen.cli import main

    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(tiny_model_dir), str(out), "--dtype", "float16"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {out} (") and "float16 weights, with its BPE vocabulary" in said
    r = gguf.GGUFReader(str(out))
    lm = lmgen.load(tiny_model_dir)
    tensors = {t.name: t for t in r.tensors}
    want = lm.model.state_dict()["h.0.attn.c_attn.weight"].half().numpy()
    assert np.array_equal(
        np.asarray(tensors["blk.0.attn_qkv.weight"].data).reshape(want.shape), want
    )
    assert len(_field(r, "tokenizer.ggml.tokens")) == lm.config.vocab_size
    assert main(["export-gguf", str(tiny_model_dir), str(tmp_path / "no" / "m.gguf")]) == 2
    assert "the folder" in capsys.readouterr().err
