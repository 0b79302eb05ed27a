"""A GGUF's quantized weights kept as they are: loaded into QuantLinear layers without
dequantizing, the logits those of the dequantized model to the activations' 8-bit rounding
(a prompt's, by the block GEMM, those of its tokens fed one at a time to float rounding),
written back by export-gguf with the same bytes (read by the gguf package's own reader), and
`quantize="int4"` producing ggml's Q4_0 bytes that survive the same round trip bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmgen
from lmgen.gguf_export import write_gguf, write_gguf_hf
from lmgen.kernels import quant
from lmgen.quantize import QuantLinear
from lmgen.tokenizers import load_tokenizer
from test_gguf_export_hf import tiny_model
from test_tokenizers_pretrained import llama3_dir

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
TEXT = "The quick brown fox jumps over the lazy dog, and then the dog sleeps again."


def raw_tensors(path) -> dict[str, tuple[str, bytes]]:
    """Each tensor's ggml type and bytes, by the gguf package's reader."""
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in reader.tensors
    }


def logits(lm, text=TEXT):
    ids = torch.tensor([lm.tokenizer.encode(text)])
    with torch.no_grad():
        return lm.model(ids)[0]


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def q8_file(request, tmp_path):
    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    model = tiny_model("llama", tok.vocab_size, tied=request.param)
    return write_gguf_hf(
        model.config.to_dict(), model.state_dict(), tok, tmp_path / "m.gguf", "q8_0"
    )


def test_gguf_blocks_load_quantized_and_match_the_float_model(q8_file):
    lm = lmgen.load(q8_file)
    layers = [m for m in lm.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 2 * 4 + 1  # q/k/v, o, gate/up, down per layer, and the head
    assert {k for m in layers for k in m.kinds} == {"Q8_0"}
    floats = lmgen.load(q8_file, quantize="none")
    assert not any(isinstance(m, QuantLinear) for m in floats.model.modules())
    assert not any(
        isinstance(m, QuantLinear) for m in lmgen.load(q8_file, dtype=torch.float32).model.modules()
    )
    # a whole prompt (the block GEMM, or dequantized weights where it is not built) against
    # the float model, to the activations' 8-bit rounding, and against the same tokens fed one
    # at a time (the row product: the same int8 activations), to float rounding
    want = logits(floats)
    ids = torch.tensor([lm.tokenizer.encode(TEXT)])
    assert ids.shape[1] > 16
    with torch.no_grad():
        prompt = lm.model(ids)[0]
        cache = lm.model.new_cache(1, ids.shape[1])
        alone = torch.cat([lm.model(ids[:, i : i + 1], cache=cache)[0]
                           for i in range(ids.shape[1])])  # fmt: skip
    assert (prompt - want).abs().max() <= 3e-2 * want.abs().max()
    if quant.has_gemm():
        assert (prompt - alone).abs().max() <= 1e-4 * want.abs().max()
    steps = lm.generate("The quick brown fox", max_new_tokens=4, min_new_tokens=4)
    ref = floats.generate("The quick brown fox", max_new_tokens=4, min_new_tokens=4)
    assert steps.choices[0].token_ids[:1] == ref.choices[0].token_ids[:1]


def test_parameter_count_is_the_float_models(q8_file):
    """A layer held as blocks (or int8, or int4 made here) counts its out x in weights: the
    count equals transformers' for the same weights, tied head once (/v1/models reports it)."""
    floats = lmgen.load(q8_file, quantize="none")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(q8_file.parent), gguf_file=q8_file.name
    )
    want = hf.num_parameters()
    assert floats.model.num_parameters() == want
    assert lmgen.load(q8_file).model.num_parameters() == want
    assert lmgen.load(q8_file, quantize="int8").model.num_parameters() == want


def test_export_writes_the_files_blocks_back(q8_file, tmp_path):
    lm = lmgen.load(q8_file)
    out = write_gguf(lm.model, tmp_path / "back.gguf", tokenizer=lm.tokenizer)
    before, after = raw_tensors(q8_file), raw_tensors(out)
    assert set(before) == set(after)
    quantized = [n for n, (kind, _) in before.items() if kind == "Q8_0"]
    assert "token_embd.weight" in quantized and "blk.0.attn_q.weight" in quantized
    for name in quantized:
        assert after[name] == before[name], name


def test_int4_makes_ggmls_q4_0_and_round_trips_exactly(tmp_path):
    tok = load_tokenizer(llama3_dir(tmp_path / "m"))
    model = tiny_model("llama", tok.vocab_size, tied=True)
    model.save_pretrained(tmp_path / "m")
    lm = lmgen.load(tmp_path / "m", quantize="int4")
    c_fc = lm.model.h[0].mlp.c_fc
    assert isinstance(c_fc, QuantLinear) and [p.kind for p in c_fc.parts()] == ["Q4_0"]
    gate_up = torch.cat([model.model.layers[0].mlp.gate_proj.weight,
                         model.model.layers[0].mlp.up_proj.weight]).detach()  # fmt: skip
    want = gguf.quants.quantize(gate_up.numpy(), gguf.GGMLQuantizationType.Q4_0)
    assert c_fc.parts()[0].blocks.numpy().tobytes() == np.ascontiguousarray(want).tobytes()
    assert lm.model.lm_head.kinds == ["Q8_0"]  # the tied embedding, as llama-quantize keeps it
    path = write_gguf(lm.model, tmp_path / "int4.gguf", tokenizer=lm.tokenizer)
    kinds = {k for k, _ in raw_tensors(path).values()}
    assert kinds == {"Q4_0", "Q8_0", "F32"}
    back = lmgen.load(path)
    assert torch.equal(logits(back), logits(lm))  # the same blocks, the same kernel
    again = write_gguf(back.model, tmp_path / "again.gguf", tokenizer=back.tokenizer)
    assert raw_tensors(again) == raw_tensors(path)


def test_bad_quantize_is_one_line():
    with pytest.raises(lmgen.errors.ConfigError) as info:
        lmgen.load("shakespeare", quantize="int3")
    assert "quantize" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("flag", [None, "none", "int4"])
def test_cli_quantize_flag_loads_as_the_api_does(flag, q8_file, capsys):
    import json

    from test_cli_generate import run

    flags = ["--quantize", flag] if flag else []
    code, out, err = run(capsys, "generate", "The quick", "--model", str(q8_file), "--json",
                         "--max-new-tokens", "4", *flags)  # fmt: skip
    assert code == 0, err
    want = lmgen.load(q8_file, quantize=flag).generate("The quick", max_new_tokens=4)
    assert json.loads(out)["choices"][0]["token_ids"] == want.token_ids
