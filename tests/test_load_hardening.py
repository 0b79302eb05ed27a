"""Corrupt or hostile model directories: every case is refused with one clear ModelLoadError
(CLI: exit 2, one `error: ...` line), never a traceback, and never after allocating what the
weights file does not hold; the valid variants among them load and generate.

Each case mutates a copy of a tiny model directory. The list is also the loader probe of
issue 16: `pytest tests/test_load_hardening.py` reports cases tried / failures."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmgen
from lmgen import LM, ModelLoadError
from lmgen.checkpoint import write_model_dir
from lmgen.model import GPT, GPTConfig
from lmgen.tokenizers import BPETokenizer

TEXT = "To be, or not to be: that is the question. Whether 'tis nobler in the mind.\n" * 20


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    tok = BPETokenizer.train(texts=[TEXT], vocab_size=280)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return write_model_dir(GPT(config).eval(), tok, tmp_path_factory.mktemp("hard") / "m")


# --- mutations ---------------------------------------------------------------------------


def config(**changes):
    def mutate(d: Path) -> None:
        c = json.loads((d / "config.json").read_text())
        for k, v in changes.items():
            if v is _DELETE:
                c.pop(k, None)
            else:
                c[k] = v
        (d / "config.json").write_text(json.dumps(c))

    return mutate


_DELETE = object()


def write(name: str, data: str | bytes):
    def mutate(d: Path) -> None:
        path = d / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)

    return mutate


def tok_config(**changes):
    def mutate(d: Path) -> None:
        c = json.loads((d / "tokenizer_config.json").read_text())
        c.update(changes)
        (d / "tokenizer_config.json").write_text(json.dumps(c))

    return mutate


def tensors(fn):
    """Rewrites model.safetensors through fn(dict of tensors) -> dict of tensors."""

    def mutate(d: Path) -> None:
        path = d / "model.safetensors"
        save_file(fn(load_file(str(path))), str(path))

    return mutate


def _set(name: str, value):
    def fn(ts):
        ts[name] = value(ts[name]) if callable(value) else value
        return ts

    return fn


def _sparse_tokenizer(d: Path) -> None:
    """A tokenizer.json whose vocabulary is small but whose ids reach beyond the model's."""
    t = json.loads((d / "tokenizer.json").read_text())
    vocab = t["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    vocab[last] = 5000
    t["model"]["merges"] = []
    for added in t.get("added_tokens", []):
        vocab.pop(added["content"], None)
    (d / "tokenizer.json").write_text(json.dumps(t))


def _added_token_beyond(d: Path) -> None:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(d / "tokenizer.json"))
    backend.add_tokens([f"<x{i}>" for i in range(40)])
    backend.save(str(d / "tokenizer.json"))


def _nested(depth: int) -> str:
    return '{"model_type": "gpt2", "x": ' + "[" * depth + "]" * depth + "}"


def _bin_weights(transform=None):
    def mutate(d: Path) -> None:
        ts = load_file(str(d / "model.safetensors"))
        (d / "model.safetensors").unlink()
        torch.save(transform(ts) if transform else ts, d / "pytorch_model.bin")

    return mutate


def _chain(*mutations):
    def mutate(d: Path) -> None:
        for m in mutations:
            m(d)

    return mutate


REFUSED = {
    # issue 16, the 17 cases it lists
    "n_inner string": (config(n_inner="64"), r"config\.json: n_inner must be an integer"),
    "layer_norm_epsilon string": (
        config(layer_norm_epsilon="1e-5"),
        r"layer_norm_epsilon must be a number",
    ),
    "resid_pdrop string": (config(resid_pdrop="0.1"), r"resid_pdrop must be a number"),
    "eos_token_id string": (config(eos_token_id="0"), r"eos_token_id must be an integer"),
    "eos_token_id list": (config(eos_token_id=["0", 1]), r"eos_token_id must be an integer"),
    "n_inner negative": (config(n_inner=-5), r"n_inner must be in \[1, "),
    "deeply nested config.json": (write("config.json", _nested(100_000)), r"nested too deeply"),
    "n_embd 1e9": (config(n_embd=10**9), r"wte\.weight has shape \(280, 16\).*\(280, 1000000000\)"),
    "n_layer 1e6": (config(n_layer=10**6), r"n_layer=1000000.*holds 2 layers"),
    "n_positions 1e9": (config(n_positions=10**9), r"wpe\.weight has shape \(32, 16\)"),
    "vocab_size 1e9": (config(vocab_size=10**9), r"wte\.weight has shape \(280, 16\)"),
    "n_inner 1e12": (config(n_inner=10**12), r"n_inner must be in \[1, 2147483647\]"),
    "n_inner 1e9": (
        config(n_inner=10**9),
        r"c_fc\.weight has shape \(16, 64\).*\(16, 1000000000\)",
    ),
    "tokenizer_config.json an array": (
        write("tokenizer_config.json", "[1, 2]"),
        r"tokenizer_config\.json: expected a JSON object, found a list",
    ),
    "tokenizer_config eos_token a list": (
        tok_config(eos_token=["<|endoftext|>"]),
        r"tokenizer_config\.json: eos_token must be a string",
    ),
    "tokenizer_config eos_token an int": (
        tok_config(eos_token=5),
        r"tokenizer_config\.json: eos_token must be a string",
    ),
    "tokenizer ids beyond the model's vocabulary": (
        _sparse_tokenizer,
        r"ids up to 5000.*vocab_size is 280",
    ),
    # more of config.json
    "added tokens beyond the model's vocabulary": (_added_token_beyond, r"vocab_size is 280"),
    "n_embd float": (config(n_embd=16.0), r"n_embd must be an integer, got 16\.0"),
    "n_embd true": (config(n_embd=True), r"n_embd must be an integer, got True"),
    "n_embd 1e30": (config(n_embd=10**30), r"n_embd must be in \[1, "),
    "n_head zero": (config(n_head=0), r"n_head must be in \[1, "),
    "n_head not dividing n_embd": (config(n_head=3), r"divisible by n_head"),
    "n_layer zero": (config(n_layer=0), r"n_layer must be in \[1, "),
    "n_layer fewer than the file": (config(n_layer=1), r"n_layer=1.*holds 2 layers"),
    "n_positions negative": (config(n_positions=-1), r"n_positions must be in"),
    "n_ctx string, no n_positions": (
        config(n_positions=_DELETE, n_ctx="32"),
        r"n_ctx must be an integer",
    ),
    "vocab_size null": (config(vocab_size=None), r"vocab_size must be an integer, got None"),
    "vocab_size missing": (config(vocab_size=_DELETE), r"missing key 'vocab_size'"),
    "vocab_size below the tokenizer": (config(vocab_size=100), r"vocab_size is 100"),
    "n_inner zero": (config(n_inner=0), r"n_inner must be in \[1, "),
    "layer_norm_epsilon NaN": (config(layer_norm_epsilon=float("nan")), r"layer_norm_epsilon"),
    "layer_norm_epsilon negative": (config(layer_norm_epsilon=-1e-5), r"layer_norm_epsilon"),
    "layer_norm_epsilon huge": (config(layer_norm_epsilon=1e300), r"layer_norm_epsilon"),
    "resid_pdrop 1.5": (config(resid_pdrop=1.5), r"resid_pdrop must be in \[0, 1\)"),
    "attn_pdrop list": (config(attn_pdrop=[0.1]), r"attn_pdrop must be a number"),
    "activation_function list": (
        config(activation_function=["gelu"]),
        r"activation_function must be a string",
    ),
    "activation_function unknown": (config(activation_function="softplus"), r"'softplus'"),
    "tie_word_embeddings string": (
        config(tie_word_embeddings="yes"),
        r"tie_word_embeddings must be true or false",
    ),
    "scale_attn_weights string": (
        config(scale_attn_weights="false"),
        r"scale_attn_weights must be true or false",
    ),
    "reorder_and_upcast_attn true": (config(reorder_and_upcast_attn=True), r"not supported"),
    "bos_token_id true": (config(bos_token_id=True), r"bos_token_id must be an integer"),
    "model_type list": (config(model_type=["gpt2"]), r"model_type is \['gpt2'\]"),
    "model_type missing": (config(model_type=_DELETE), r"model_type is None"),
    "config.json null": (write("config.json", "null"), r"expected a JSON object, found null"),
    "config.json a string": (write("config.json", '"gpt2"'), r"expected a JSON object"),
    "config.json empty": (write("config.json", ""), r"config\.json: invalid JSON"),
    "config.json not UTF-8": (write("config.json", b'{"n_embd": "\xff"}'), r"not UTF-8"),
    "config.json huge": (
        write("config.json", '{"model_type": "gpt2", "pad": "' + "x" * (2 << 20) + '"}'),
        r"config\.json: .*bytes",
    ),
    "config.json missing": (lambda d: (d / "config.json").unlink(), r"config\.json is missing"),
    # weights that do not fit the config
    "untied config, tied file": (
        config(tie_word_embeddings=False),
        r"missing tensors \['lm_head\.weight'\]",
    ),
    "a tensor of the wrong rank": (
        tensors(_set("transformer.ln_f.weight", lambda t: t[None])),
        r"ln_f\.weight has shape \(1, 16\)",
    ),
    "an extra tensor": (
        tensors(_set("transformer.h.0.attn.extra", torch.zeros(3))),
        r"unexpected tensors \['transformer\.h\.0\.attn\.extra'\]",
    ),
    "a layer missing": (
        tensors(lambda ts: {k: v for k, v in ts.items() if ".h.1." not in k}),
        r"n_layer=2.*holds 1 layer\b",
    ),
    "an integer tensor": (
        tensors(_set("transformer.ln_f.bias", lambda t: t.long())),
        r"ln_f\.bias has dtype I64",
    ),
    "NaN in a weight": (
        tensors(
            _set(
                "transformer.h.1.mlp.c_fc.weight",
                lambda t: t.index_fill(0, torch.tensor([3]), float("nan")),
            )
        ),
        r"h\.1\.mlp\.c_fc\.weight holds NaN or infinite values",
    ),
    "inf in the embeddings": (
        tensors(
            _set(
                "transformer.wte.weight", lambda t: t.index_fill(1, torch.tensor([0]), float("inf"))
            )
        ),
        r"wte\.weight holds NaN or infinite values",
    ),
    "model.safetensors empty": (write("model.safetensors", b""), r"model\.safetensors"),
    "model.safetensors a directory": (
        lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors").mkdir()),
        r"no weights found",
    ),
    "pytorch_model.bin with a wrong shape": (
        _bin_weights(_set("transformer.wpe.weight", lambda t: t[:8])),
        r"pytorch_model\.bin: tensor transformer\.wpe\.weight has shape \(8, 16\)",
    ),
    "pytorch_model.bin a list": (
        _bin_weights(lambda ts: list(ts.values())),
        r"pytorch_model\.bin: expected a dict of tensors",
    ),
    "pytorch_model.bin garbage": (
        _chain(_bin_weights(), write("pytorch_model.bin", b"PK\x03\x04garbage")),
        r"pytorch_model\.bin",
    ),
    # tokenizer files
    "tokenizer.json an array": (write("tokenizer.json", "[]"), r"tokenizer\.json"),
    "tokenizer.json empty": (write("tokenizer.json", ""), r"tokenizer\.json"),
    "tokenizer.json not UTF-8": (write("tokenizer.json", b"\xff\xfe{}"), r"tokenizer\.json"),
    "tokenizer.json deeply nested": (
        write("tokenizer.json", "[" * 100_000 + "]" * 100_000),
        r"tokenizer\.json",
    ),
    "tokenizer.json schema wrong": (
        write("tokenizer.json", '{"model": {"type": "BPE", "vocab": 5}}'),
        r"tokenizer\.json",
    ),
    "tokenizer_config.json a string": (
        write("tokenizer_config.json", '"x"'),
        r"expected a JSON object, found a string",
    ),
    "tokenizer_config.json deeply nested": (
        write("tokenizer_config.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        r"tokenizer_config\.json: .*nested too deeply",
    ),
    "tokenizer_config.json invalid JSON": (
        write("tokenizer_config.json", "{"),
        r"tokenizer_config\.json: invalid JSON",
    ),
    "tokenizer_config.json not UTF-8": (
        write("tokenizer_config.json", b'{"eos_token": "\xff"}'),
        r"tokenizer_config\.json: not UTF-8",
    ),
    "tokenizer_config eos_token object without content": (
        tok_config(eos_token={"text": "<|endoftext|>"}),
        r"eos_token must be a string",
    ),
    "tokenizer_config bos_token an object with a list": (
        tok_config(bos_token={"content": ["x"]}),
        r"bos_token must be a string",
    ),
    "tokenizer_config unk_token a list": (tok_config(unk_token=[1]), r"unk_token must be"),
    "tokenizer_config lmgen_tokenizer unknown": (
        tok_config(lmgen_tokenizer="sentencepiece"),
        r"lmgen_tokenizer must be one of",
    ),
    "tokenizer_config lmgen_tokenizer a list": (
        tok_config(lmgen_tokenizer=["word"]),
        r"lmgen_tokenizer must be one of",
    ),
    "word tokenizer asking for a missing <unk>": (
        tok_config(lmgen_tokenizer="word", unk_token="<unk>"),
        r"tokenizer.*<unk>",
    ),
    # issue 31: a config.json that is not a file, and torch_dtype values transformers refuses
    "config.json a directory": (
        _chain(lambda d: (d / "config.json").unlink(), lambda d: (d / "config.json").mkdir()),
        r"config\.json: a directory, not a file",
    ),
    "config.json a symlink loop": (
        _chain(
            lambda d: (d / "config.json").unlink(),
            lambda d: (d / "config.json").symlink_to("config.json"),
        ),
        r"config\.json: a symbolic link loop",
    ),
    "config.json a symlink loop of two": (
        _chain(
            lambda d: (d / "config.json").unlink(),
            lambda d: (d / "config.json").symlink_to("other.json"),
            lambda d: (d / "other.json").symlink_to("config.json"),
        ),
        r"config\.json: a symbolic link loop",
    ),
    "config.json a dangling symlink": (
        _chain(
            lambda d: (d / "config.json").unlink(),
            lambda d: (d / "config.json").symlink_to("gone.json"),
        ),
        r"config\.json: a symbolic link to 'gone\.json', which does not exist",
    ),
    "config.json a named pipe": (
        _chain(lambda d: (d / "config.json").unlink(), lambda d: os.mkfifo(d / "config.json")),
        r"config\.json: a named pipe, not a file",
    ),
    "torch_dtype float128": (
        config(torch_dtype="float128"),
        r"config\.json: torch_dtype must be one of float32, float16, bfloat16, float64 "
        r"\(or null\), got 'float128'",
    ),
    "torch_dtype 12345": (config(torch_dtype=12345), r"torch_dtype must be one of .*got 12345"),
    "torch_dtype int8": (config(torch_dtype="int8"), r"torch_dtype must be one of .*got 'int8'"),
    "torch_dtype auto": (config(torch_dtype="auto"), r"torch_dtype must be one of .*got 'auto'"),
    "dtype (transformers 5) int8": (config(dtype="int8"), r"\bdtype must be one of .*'int8'"),
    "vocab.json + merges.txt garbage": (
        _chain(
            lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
            write("vocab.json", "[1]"),
            write("merges.txt", "#version\n"),
        ),
        r"vocab\.json",
    ),
}

ACCEPTED = {
    # transformers' GPT2Config defaults bos/eos to 50256 whatever the vocabulary: ignored
    "eos_token_id beyond the vocabulary (GPT2Config's default)": config(eos_token_id=50256),
    "eos_token_id huge": config(eos_token_id=2**70),
    "bos_token_id negative": config(bos_token_id=-1),
    "unknown extra keys": config(my_key={"deep": [1, 2]}, torch_dtype="bfloat16"),
    "torch_dtype float32, dtype float16 (transformers 5)": config(
        torch_dtype="float32", dtype="float16"
    ),
    "torch_dtype null": config(torch_dtype=None),
    "n_ctx only": config(n_positions=_DELETE, n_ctx=32),
    "eos and bos null": config(eos_token_id=None, bos_token_id=None),
    "lm_head stored though tied": tensors(
        lambda ts: {**ts, "lm_head.weight": ts["transformer.wte.weight"].clone()}
    ),
    "names without the transformer. prefix (old GPT-2 files)": tensors(
        lambda ts: {k.removeprefix("transformer."): v for k, v in ts.items()}
    ),
    "HF attention buffers present": tensors(
        lambda ts: {**ts, "transformer.h.0.attn.bias": torch.ones(1, 1, 32, 32, dtype=torch.bool)}
    ),
    "fp16 weights": tensors(lambda ts: {k: v.half() for k, v in ts.items()}),
    "eos_token as an AddedToken object": tok_config(
        eos_token={"content": "<|endoftext|>", "lstrip": False}
    ),
    "tokenizer_config.json missing": lambda d: (d / "tokenizer_config.json").unlink(),
    "pytorch_model.bin": _bin_weights(),
    "vocab_size above the tokenizer (padded)": lambda d: _pad_vocab(d, 300),
}


def _pad_vocab(d: Path, size: int) -> None:
    config(vocab_size=size)(d)

    def pad(ts):
        w = ts["transformer.wte.weight"]
        ts["transformer.wte.weight"] = torch.cat([w, torch.zeros(size - len(w), w.shape[1])])
        return ts

    tensors(pad)(d)


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 8 << 30


@pytest.fixture
def limited_memory():
    """No case may allocate more than a few GB: the address space is capped while it loads."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + (3 << 30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_corrupt_model_dir_is_refused_clearly(case, base_dir, tmp_path, capsys, limited_memory):
    mutate, message = REFUSED[case]
    d = Path(shutil.copytree(base_dir, tmp_path / "m"))
    mutate(d)
    with pytest.raises(ModelLoadError, match=message) as info:
        lmgen.load(d)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)
    from lmgen.cli import main

    assert main(["generate", "--model", str(d), "To be", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_valid_variants_load_and_generate(case, base_dir, tmp_path, limited_memory):
    d = Path(shutil.copytree(base_dir, tmp_path / "m"))
    ACCEPTED[case](d)
    lm = lmgen.load(d)
    reference = lmgen.load(base_dir)
    ids = torch.tensor([reference.tokenizer.encode("To be, or not")])
    with torch.no_grad():
        got, want = lm.model(ids), reference.model(ids)
    if got.shape != want.shape:  # a padded vocabulary: the extra rows change nothing else
        got = got[..., : want.shape[-1]]
    atol = 1e-2 if "fp16" in case else 1e-5
    torch.testing.assert_close(got[..., :280], want[..., :280], atol=atol, rtol=0)
    out = lm.generate("To be", max_new_tokens=3)
    assert isinstance(out.text, str)


ODD_NAMES = ["\0", "~no-such-user-lmgen/x", "x" * 5000, "hf:../../etc", "a/\udcff/b"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_model_names_are_refused_clearly(name):
    with pytest.raises(ModelLoadError) as info:
        lmgen.load(name)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)


def test_shape_check_happens_before_allocating(base_dir, tmp_path, monkeypatch):
    """A config that claims 10^9 positions is refused from the header alone: GPT is never
    built (building it would try to allocate 10^9 x n_embd floats)."""
    import lmgen.checkpoint as checkpoint

    d = Path(shutil.copytree(base_dir, tmp_path / "m"))
    config(n_positions=10**9)(d)

    def no_model(*a, **k):
        raise AssertionError("GPT built before the shapes were checked")

    monkeypatch.setattr(checkpoint, "GPT", no_model)
    with pytest.raises(ModelLoadError, match="wpe"):
        lmgen.load(d)


def test_special_ids_outside_the_vocabulary_are_dropped_with_a_warning(base_dir, tmp_path, caplog):
    d = Path(shutil.copytree(base_dir, tmp_path / "m"))
    config(eos_token_id=50256, bos_token_id=-1)(d)
    lm = lmgen.load(d)
    assert lm.config.eos_token_id is None and lm.config.bos_token_id is None
    assert lm.eos_token_ids == [lm.tokenizer.eos_token_id]  # the tokenizer's still stops
    said = [r.getMessage() for r in caplog.records if "outside the vocabulary" in r.getMessage()]
    assert len(said) == 2 and "eos_token_id=50256" in said[1]
    assert isinstance(lmgen.load(base_dir), LM)
