"""lmgen.gguf_export.write_gguf_hf: transformers models (config dict + state_dict) written as
GGUF, read back by lmgen.model.gguf.read_gguf and by transformers' own GGUF loader, which
must give the original tensors, config, token ids and logits; llama.cpp runs the file (slow,
where a llama.cpp binary is at hand)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lmgen.errors import ConfigError
from lmgen.gguf_export import write_gguf_hf
from lmgen.model.gguf import read_gguf
from lmgen.tokenizers import _byte_alphabet, load_tokenizer
from test_gguf_read import MIXED_TEXT
from test_tokenizers_pretrained import llama2_dir, llama3_dir

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

TEXTS = [MIXED_TEXT, "The quick brown fox", "<|begin_of_text|>hi<|eot_id|>"]


def tiny_model(arch: str, vocab: int, tied: bool = False):
    common = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=vocab,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-6,
    )
    config = {
        "llama": lambda: transformers.LlamaConfig(**common, rope_theta=500000.0),
        "qwen2": lambda: transformers.Qwen2Config(**common),
        # transformers' GGUF reader takes qwen3's head_dim from Qwen3Config's default (128)
        "qwen3": lambda: transformers.Qwen3Config(**common, head_dim=128),
        # and gemma3's query_pre_attn_scalar from Gemma3TextConfig's default (256)
        "gemma3": lambda: transformers.Gemma3TextConfig(
            **common, head_dim=256, query_pre_attn_scalar=256, sliding_window=8
        ),
    }[arch]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms away from their init (ones / zeros), so a lost offset shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_hf_model_round_trips_through_gguf(tmp_path, arch):
    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    model = tiny_model(arch, tok.vocab_size, tied=arch == "gemma3")
    sd = model.state_dict()
    path = write_gguf_hf(model.config.to_dict(), sd, tok, tmp_path / "m.gguf")
    ours = read_gguf(path)
    tied = model.config.tie_word_embeddings
    assert set(ours.tensors) == set(sd) - ({"lm_head.weight"} if tied else set())
    for name, t in ours.tensors.items():
        if arch == "gemma3" and "norm" in name:  # stored as 1 + w: w rounds to float32 ulp(1)
            assert torch.allclose(t, sd[name], rtol=0, atol=2**-23), name
        else:
            assert torch.equal(t, sd[name]), name
    for key in (
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "hidden_size",
        "vocab_size",
        "tie_word_embeddings",
    ):
        assert ours.hf_config[key] == getattr(model.config, key), key
    for text in TEXTS:
        assert ours.tokenizer.encode(text) == tok.encode(text), text
    assert ours.chat_template == tok.chat_template
    # transformers' own loader on the same file: the same model, logit for logit
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32
    ).eval()
    ids = torch.tensor([tok.encode(MIXED_TEXT)[:40]])
    with torch.no_grad():
        want, got = model(ids).logits, theirs(ids).logits
    assert (want - got).abs().max().item() < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == tok.encode(text), text


@pytest.mark.parametrize("arch", ["gpt2", "gptneox"])
def test_gpt2_and_neox_round_trip(tmp_path, arch):
    """GPT-2 (Conv1D weights transposed) and GPT-NeoX (fused qkv regrouped) out and back."""
    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    if arch == "gpt2":
        config = transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=tok.vocab_size
        )
    else:
        config = transformers.GPTNeoXConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            vocab_size=tok.vocab_size,
            max_position_embeddings=32,
            rotary_pct=0.25,
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    sd = {
        k: v for k, v in model.state_dict().items() if not k.endswith((".attn.bias", "masked_bias"))
    }
    ours = read_gguf(write_gguf_hf(model.config.to_dict(), sd, tok, tmp_path / "m.gguf"))
    rename = {"lm_head.weight": "embed_out.weight"} if arch == "gptneox" else {}
    tied = model.config.tie_word_embeddings
    expected = {rename.get(k, k) for k in sd} - ({"lm_head.weight"} if tied else set())
    assert set(ours.tensors) == expected
    for name, t in sd.items():
        if name in ours.tensors or name in rename:
            assert torch.equal(ours.tensors[rename.get(name, name)], t), name
    if arch == "gptneox":
        assert ours.hf_config["rotary_pct"] == 0.25
    else:
        assert (ours.hf_config["n_positions"], ours.hf_config["n_inner"]) == (32, None)


@pytest.mark.parametrize("dtype", ["float16", "q8_0"])
def test_low_precision_weights(tmp_path, dtype):
    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    model = tiny_model("llama", tok.vocab_size)
    sd = model.state_dict()
    ours = read_gguf(write_gguf_hf(model.config.to_dict(), sd, tok, tmp_path / "m.gguf", dtype))
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, t in ours.tensors.items():
        want = sd[name]
        if want.dim() == 1:
            assert torch.equal(t, want), name
            continue
        if dtype == "float16":
            assert t.dtype == torch.float16
            # q/k rows are permuted on the way out and back, which is exact
            assert torch.equal(t, want.half()), name
        else:
            # q8_0 blocks run along rows, which the q/k permutation keeps: gguf's own round trip
            ref = gguf.quants.dequantize(gguf.quants.quantize(want.numpy(), q8), q8)
            if "q_proj" not in name and "k_proj" not in name:
                assert torch.equal(t, torch.from_numpy(ref)), name
            assert (t - want).abs().max() <= want.abs().max() / 127 * 0.6, name


def test_sentencepiece_tokenizer_round_trips(tmp_path):
    directory = llama2_dir(tmp_path / "tok")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "LlamaTokenizerFast"  # rebuilt with Metaspace, as GGUF's
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(directory)
    model = tiny_model("llama", tok.vocab_size)
    path = write_gguf_hf(model.config.to_dict(), model.state_dict(), tok, tmp_path / "m.gguf")
    meta = {f.name: f for f in gguf.GGUFReader(str(path)).fields.values()}
    assert bytes(meta["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    ours = read_gguf(path).tokenizer
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    texts = [MIXED_TEXT, "The quick brown fox", "<s>hi</s>"]
    for text in texts:
        assert ours.encode(text) == tok.encode(text) == hf_tok(text)["input_ids"], text
    assert ours.bos_token_id == tok.bos_token_id == 1


def test_refusals_are_one_line(tmp_path):
    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    model = tiny_model("llama", tok.vocab_size)
    cfg, sd = model.config.to_dict(), model.state_dict()
    with pytest.raises(ConfigError, match="model_type"):
        write_gguf_hf({**cfg, "model_type": "mamba"}, sd, tok, tmp_path / "a.gguf")
    with pytest.raises(ConfigError, match="float32, float16 and q8_0"):
        write_gguf_hf(cfg, sd, tok, tmp_path / "b.gguf", "q4_0")
    scaled = {**cfg, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    with pytest.raises(ConfigError, match="'dynamic'"):
        write_gguf_hf(scaled, sd, tok, tmp_path / "c.gguf")
    with pytest.raises(ConfigError, match="no GGUF name"):
        write_gguf_hf(cfg, {**sd, "model.extra.weight": torch.zeros(2)}, tok, tmp_path / "d.gguf")


# --- llama.cpp (slow) ---------------------------------------------------------------------------


def find_llama_cli() -> str | None:
    """A llama.cpp binary that prints a greedy completion: $LLAMA_CPP_BIN (a folder of
    llama.cpp binaries) or PATH. Built from the llama-cpp-python sdist's vendored sources in
    about ten minutes on two cores:

        pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcpp
        cd /tmp/lcpp && tar xzf llama_cpp_python-0.3.36.tar.gz
        cd llama_cpp_python-0.3.36/vendor/llama.cpp
        cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
              -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF
        cmake --build build -j2 --target llama-simple
        LLAMA_CPP_BIN=$PWD/build/bin make test-slow
    """
    folder = os.environ.get("LLAMA_CPP_BIN")
    for name in ("llama-simple", "llama-completion", "llama-cli"):
        if folder and (Path(folder) / name).is_file():
            return str(Path(folder) / name)
        if found := shutil.which(name):
            return found
    return None


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_llama_cpp_runs_the_export_greedily_as_transformers(tmp_path, arch):
    binary = find_llama_cli()
    if binary is None:
        pytest.skip("no llama.cpp binary (set LLAMA_CPP_BIN to a folder holding llama-simple)")
    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    model = tiny_model(arch, tok.vocab_size, tied=arch == "gemma3")
    path = write_gguf_hf(model.config.to_dict(), model.state_dict(), tok, tmp_path / "m.gguf")
    prompt = "The quick brown fox"
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    # llama.cpp prints each token's bytes as they come: compare bytes, not text (a random
    # model's tokens need not end on whole UTF-8 characters)
    byte_of = {c: b for b, c in _byte_alphabet().items()}
    pieces = [tok.backend.id_to_token(i) for i in out[0, ids.shape[1] :].tolist()]
    specials = {t.content for t in tok.backend.get_added_tokens_decoder().values()}
    if any(p in specials for p in pieces):  # llama.cpp stops at an end-of-generation token
        pieces = pieces[: next(i for i, p in enumerate(pieces) if p in specials)]
    want = bytes(byte_of[c] for piece in pieces for c in piece)
    cmd = [binary, "-m", str(path), "-n", "8", prompt]
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert prompt.encode() + want in p.stdout, (want, p.stdout[-500:])


def test_llama3_rope_scaling_goes_out_as_rope_freqs_and_comes_back(tmp_path):
    """Llama 3.1's rope scaling: llama.cpp stores a per-frequency divisor (rope_freqs); it must
    equal transformers' own llama3 frequencies, and read_gguf must recover rope_scaling."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=64,
        intermediate_size=96,
        vocab_size=tok.vocab_size,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(scaling),  # transformers adds rope_theta to the dict it is given
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    path = write_gguf_hf(model.config.to_dict(), model.state_dict(), tok, tmp_path / "m.gguf")
    stored = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}["rope_freqs.weight"]
    base = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    want = base / scaled.double()
    assert torch.allclose(torch.from_numpy(stored.data.copy()).double(), want, rtol=1e-5)
    ours = read_gguf(path)
    assert ours.hf_config["rope_scaling"] == scaling
    assert "rope_freqs.weight" not in ours.tensors


@pytest.mark.slow
def test_llama_cpp_runs_smollm2_read_and_written_back(tmp_path):
    """The real SmolLM2 file read by read_gguf, built as transformers' LlamaForCausalLM from
    hf_config + tensors, and written back by write_gguf_hf (float32): llama.cpp's greedy
    continuation of a chat prompt equals transformers' on the same weights."""
    from real_models import smollm2_gguf

    binary = find_llama_cli()
    if binary is None:
        pytest.skip("no llama.cpp binary (set LLAMA_CPP_BIN to a folder holding llama-simple)")
    ours = read_gguf(smollm2_gguf())
    config = transformers.LlamaConfig(**ours.hf_config)
    model = transformers.LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(ours.tensors, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    model.tie_weights()
    path = write_gguf_hf(ours.hf_config, ours.tensors, ours.tokenizer, tmp_path / "s.gguf")
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([ours.tokenizer.encode(prompt)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None)
    want = ours.tokenizer.decode(out[0, ids.shape[1] :].tolist())
    assert "Paris" in want
    want = want.split("<|im_end|>")[0]  # llama.cpp stops at the end-of-turn token
    p = subprocess.run(
        [binary, "-m", str(path), "-n", "10", prompt], capture_output=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert want.encode() in p.stdout, (want, p.stdout[-500:])


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_export_gguf_command_writes_a_transformers_directory(tmp_path, capsys, arch):
    """`lmgen export-gguf` on a directory written by transformers' save_pretrained: lmgen
    loads it, and the file holds the very tensors transformers saved, and its tokenizer."""
    from lmgen.cli import main

    tok = load_tokenizer(llama3_dir(tmp_path / "tok"))
    model = tiny_model(arch, tok.vocab_size)
    model.save_pretrained(tmp_path / "model")
    tok.save(tmp_path / "model")
    out = tmp_path / "m.gguf"
    assert main(["export-gguf", str(tmp_path / "model"), str(out)]) == 0
    said = capsys.readouterr().out
    assert f"llama.cpp {arch}, float32 weights, with its BPE vocabulary" in said
    ours, sd = read_gguf(out), model.state_dict()
    assert set(ours.tensors) == set(sd)
    for name, t in ours.tensors.items():
        assert torch.equal(t, sd[name]), name
    for text in TEXTS:
        assert ours.tokenizer.encode(text) == tok.encode(text), text
