"""Model directories: load/save, interchange with transformers, atomic saves, clear errors,
and `hf:` names resolved from a (fake, offline) Hugging Face cache."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lmgen
import lmgen.checkpoint as checkpoint
import lmgen.model_files as model_files
from conftest import TINY_SHAPE, randomize_
from lmgen import LM, ModelLoadError
from lmgen.model import GPT, GPTConfig
from lmgen.tokenizers import BPETokenizer

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def ids_for(lm_or_vocab, n: int = 24, seed: int = 0) -> torch.Tensor:
    vocab = lm_or_vocab if isinstance(lm_or_vocab, int) else lm_or_vocab.config.vocab_size
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir) -> Path:
    """A writable copy of the session's tiny model directory."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def set_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# --- loading ---------------------------------------------------------------------------------


def test_load_returns_lm_with_model_tokenizer_config(tiny_model_dir, tiny_hf_model):
    lm = lmgen.load(tiny_model_dir)
    assert isinstance(lm, LM)
    assert isinstance(lm.model, GPT)
    assert isinstance(lm.tokenizer, BPETokenizer)
    assert lm.config is lm.model.config
    assert lm.config.vocab_size == tiny_hf_model.config.vocab_size
    assert lm.config.n_positions == TINY_SHAPE["n_positions"]
    assert not lm.model.training
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert lm.path == tiny_model_dir
    assert lm.tokenizer.eos_token_id in lm.eos_token_ids


def test_hf_save_pretrained_then_our_load(tiny_lm, tiny_hf_model):
    ids = ids_for(tiny_lm)
    torch.testing.assert_close(
        logits(tiny_lm.model, ids), logits(tiny_hf_model, ids), atol=ATOL, rtol=0
    )


def test_hf_pytorch_model_bin_loads_with_weights_only(model_dir, tiny_hf_model):
    # transformers 5 ignores save_pretrained(safe_serialization=False): write the legacy file
    # the way older releases did, a torch.save'd state dict in transformers' names.
    (model_dir / "model.safetensors").unlink()
    torch.save(tiny_hf_model.state_dict(), model_dir / "pytorch_model.bin")
    lm = lmgen.load(model_dir)
    ids = ids_for(lm)
    torch.testing.assert_close(logits(lm.model, ids), logits(tiny_hf_model, ids), atol=ATOL, rtol=0)


class _NotATensor:
    pass


def test_pytorch_model_bin_with_pickled_objects_is_refused(model_dir):
    (model_dir / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": _NotATensor()}, model_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin.*weights_only"):
        lmgen.load(model_dir)


def test_loads_gpt2_vocab_json_and_merges_txt(model_dir, tiny_tokenizer):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / name).unlink()
    tiny_tokenizer.backend.model.save(str(model_dir))
    assert (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file()
    lm = lmgen.load(model_dir)
    text = "The quick brown fox, café 🙂"
    assert lm.tokenizer.encode(text) == tiny_tokenizer.encode(text)


# --- saving ----------------------------------------------------------------------------------


def test_save_then_load_is_identical(tiny_lm, tmp_path):
    out = tiny_lm.save(tmp_path / "saved")
    assert out == tmp_path / "saved"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    again = lmgen.load(out)
    assert again.config == tiny_lm.config
    ids = ids_for(tiny_lm)
    assert torch.equal(logits(again.model, ids), logits(tiny_lm.model, ids))
    text = "hello world, naïve café"
    assert again.tokenizer.encode(text) == tiny_lm.tokenizer.encode(text)


def test_saved_directory_is_not_private(tiny_lm, tmp_path):
    out = tiny_lm.save(tmp_path / "saved")
    mode = stat.S_IMODE(out.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IXUSR
    assert mode & (stat.S_IRGRP | stat.S_IROTH), oct(mode)  # not mkdtemp's 0o700


@pytest.mark.parametrize(
    "variant", [{}, {"activation_function": "gelu", "tie_word_embeddings": False}]
)
def test_our_save_loads_in_transformers_unchanged(variant, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = GPTConfig(
        vocab_size=tiny_tokenizer.vocab_size,
        bos_token_id=0,
        eos_token_id=0,
        **TINY_SHAPE,
        **variant,
    )
    torch.manual_seed(0)
    lm = LM(randomize_(GPT(config)).eval(), tiny_tokenizer)
    directory = lm.save(tmp_path / "ours")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.dtype == torch.float32
    ids = ids_for(lm)
    torch.testing.assert_close(logits(hf, ids), logits(lm.model, ids), atol=ATOL, rtol=0)

    hf_tok = AutoTokenizer.from_pretrained(directory)
    for text in ("hello world this is", "To be, or not to be: 日本語 🙂", " leading  spaces\n"):
        assert hf_tok(text)["input_ids"] == lm.tokenizer.encode(text)
        assert hf_tok.decode(lm.tokenizer.encode(text)) == text
    assert hf_tok.eos_token_id == lm.tokenizer.eos_token_id

    after = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert after == before  # loading wrote nothing into our directory


def test_fp16_save_loads_back_as_fp32(tiny_lm, tmp_path):
    out = tiny_lm.save(tmp_path / "half", dtype=torch.float16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    half = lmgen.load(out)
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    ids = ids_for(tiny_lm)
    expected = logits(tiny_lm.model, ids)
    got = logits(half.model, ids)
    assert not torch.equal(got, expected)  # it really was rounded to fp16
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=0)
    assert all(p.dtype == torch.float32 for p in tiny_lm.model.parameters())  # caller unchanged


def test_save_over_existing_directory_replaces_it(tiny_lm, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    tiny_lm.save(target)
    assert not (target / "stale.txt").exists()
    assert lmgen.load(target).config == tiny_lm.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or .old leftovers


def test_failed_save_leaves_previous_directory_intact(tiny_lm, tmp_path, monkeypatch):
    target = tmp_path / "m"
    tiny_lm.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")  # fail midway, after writing something
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save_file)
    with torch.no_grad():
        tiny_lm.model.wte.weight.mul_(2)
    with pytest.raises(OSError, match="disk full"):
        tiny_lm.save(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    lmgen.load(target)


def test_failed_swap_puts_previous_directory_back(tiny_lm, tmp_path, monkeypatch):
    target = tmp_path / "m"
    tiny_lm.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real_replace = checkpoint.os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".m.tmp-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        tiny_lm.save(target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- errors ----------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=r"nope: no such model directory"):
        lmgen.load(missing)
    with pytest.raises(ModelLoadError, match=r"nope.*no such model directory"):
        checkpoint.read_model_dir(missing)


def test_missing_config_json(model_dir):
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        lmgen.load(model_dir)


def test_config_json_invalid_json(model_dir):
    (model_dir / "config.json").write_text('{"model_type": "gpt2",')
    with pytest.raises(ModelLoadError, match=r"config\.json: invalid JSON"):
        lmgen.load(model_dir)


def test_config_json_not_an_object(model_dir):
    (model_dir / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        lmgen.load(model_dir)


def test_model_type_unsupported(model_dir):
    set_config(model_dir, model_type="t5")
    with pytest.raises(ModelLoadError, match=r"config\.json.*'t5'.*gpt2.*llama.*qwen3"):
        lmgen.load(model_dir)


def test_config_missing_key(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    del config["n_layer"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"config\.json.*n_layer"):
        lmgen.load(model_dir)


def test_config_shapes_do_not_match_tensors(model_dir):
    set_config(model_dir, n_embd=64)
    with pytest.raises(
        ModelLoadError,
        match=r"model\.safetensors: tensor transformer\.wte\.weight has shape \(384, 48\), but "
        r"config\.json implies \(384, 64\)",
    ):
        lmgen.load(model_dir)


def test_config_with_more_layers_than_tensors(model_dir):
    set_config(model_dir, n_layer=3)
    with pytest.raises(ModelLoadError, match=r"n_layer=3, but the file holds 2 layers"):
        lmgen.load(model_dir)


def test_load_weights_still_names_mismatches(tiny_lm):
    """The in-memory check (bench/ and callers without a header) keeps its messages."""
    tensors = checkpoint.state_dict_to_hf(tiny_lm.model)
    tensors["transformer.ln_f.bias"] = torch.zeros(5)
    with pytest.raises(ModelLoadError, match=r"ln_f\.bias has shape \(5,\).*\(48,\)"):
        checkpoint.load_weights(GPT(tiny_lm.config), tensors, "x")
    del tensors["transformer.ln_f.bias"]
    with pytest.raises(ModelLoadError, match=r"missing tensors \['transformer\.ln_f\.bias'\]"):
        checkpoint.load_weights(GPT(tiny_lm.config), tensors, "x")


def test_config_invalid_values(model_dir):
    set_config(model_dir, n_embd=50)  # not divisible by n_head=4
    with pytest.raises(ModelLoadError, match=r"config\.json.*n_embd"):
        lmgen.load(model_dir)


def test_tokenizer_larger_than_model_vocab(model_dir):
    big = BPETokenizer.train(texts=["abcdefghijklmnopqrstuvwxyz " * 50], vocab_size=300)
    big.backend.add_tokens([f"<extra_{i}>" for i in range(200)])
    assert big.vocab_size > 384
    big.save(model_dir)
    with pytest.raises(
        ModelLoadError, match=rf"tokenizer has {big.vocab_size} tokens.*vocab_size is 384"
    ):
        lmgen.load(model_dir)


def test_truncated_safetensors(model_dir):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*(truncated|corrupted)"):
        lmgen.load(model_dir)


@pytest.mark.parametrize(
    "garbage", [b"\x00" * 64, b"not a safetensors file at all" * 40, b"\xff" * 8 + b"{}"]
)
def test_corrupted_safetensors(model_dir, garbage):
    (model_dir / "model.safetensors").write_bytes(garbage)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*(truncated|corrupted)"):
        lmgen.load(model_dir)


def test_no_weights_file(model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors or pytorch_model\.bin"):
        lmgen.load(model_dir)


def test_no_tokenizer(model_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / name).unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        lmgen.load(model_dir)


def test_corrupted_tokenizer_json(model_dir):
    (model_dir / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        lmgen.load(model_dir)


def test_unknown_bundled_name_lists_known_ones(tmp_path, tiny_model_dir, monkeypatch):
    bundled = tmp_path / "models"
    shutil.copytree(tiny_model_dir, bundled / "tiny")
    shutil.copytree(tiny_model_dir, bundled / "other")
    monkeypatch.setattr(model_files, "BUNDLED_DIR", bundled)
    monkeypatch.chdir(tmp_path)
    assert model_files.bundled_models() == ["other", "tiny"]
    assert lmgen.load("tiny").path == bundled / "tiny"
    with pytest.raises(ModelLoadError, match=r"'shakespear'.*other, tiny"):
        lmgen.load("shakespear")


# --- hf: names, offline ----------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Points huggingface_hub at an empty cache directory in offline mode."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hf_name_resolves_from_offline_cache(fake_hub, tiny_model_dir, tiny_hf_model):
    repo = fake_hub / "models--owner--tiny-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    lm = lmgen.load("hf:owner/tiny-gpt2")
    assert lm.path == repo / "snapshots" / COMMIT
    ids = ids_for(lm)
    torch.testing.assert_close(logits(lm.model, ids), logits(tiny_hf_model, ids), atol=ATOL, rtol=0)


def test_hf_name_not_in_offline_cache(fake_hub):
    with pytest.raises(ModelLoadError, match=r"hf:owner/absent"):
        lmgen.load("hf:owner/absent")


def test_hf_name_empty():
    with pytest.raises(ModelLoadError, match="hf:"):
        lmgen.load("hf:")
