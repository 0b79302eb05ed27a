"""PretrainedTokenizer: released models' tokenizer directories (tokenizer.json +
tokenizer_config.json) give the ids `transformers.AutoTokenizer(dir)(text)["input_ids"]` gives,
BOS/EOS included, and save() writes a directory transformers loads back to the same ids.

The directories are built here with the `tokenizers` library in the shapes released models
ship: SentencePiece-style BPE with byte fallback and a `<s> $A` post-processor (Llama 2,
Mistral), byte-level BPE with a split regex and a `<|begin_of_text|> $A` template (Llama 3),
byte-level BPE with no BOS (Qwen2, SmolLM2), Gemma's `<bos>` with add_bos_token stated.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers import Tokenizer as HFTokenizer

from lmgen.tokenizers import PretrainedTokenizer, load_tokenizer
from test_gguf_read import CORPUS, MIXED_TEXT

transformers = pytest.importorskip("transformers")

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEXTS = [
    MIXED_TEXT,
    "<s>[INST] What is the capital of France? [/INST]",
    "<|im_start|>user\nhi<|im_end|>\n",
    "  two leading spaces",
    "",
]


def _sentencepiece_bpe(specials, normalizer="llama2"):
    """A SentencePiece-style BPE with byte fallback, as Llama 2 / Gemma ship it."""
    trainer_tok = HFTokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer_tok.train_from_iterator(
        CORPUS * 3, trainer=trainers.BpeTrainer(vocab_size=500, show_progress=False)
    )
    spec = json.loads(trainer_tok.to_str())
    learned = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]
    tokens = list(specials) + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [t for t in learned if t not in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]
    ]
    tok = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    if normalizer == "llama2":
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        strip = [decoders.Strip(content=" ", left=1)]
    else:  # Gemma: spaces become "▁", nothing prepended
        tok.normalizer = normalizers.Replace(" ", "▁")
        strip = []
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def _byte_level_bpe(specials, split=None):
    tok = HFTokenizer(models.BPE())
    if split:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=450,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


def _write(directory, tok, config):
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def llama2_dir(path, **flags):
    tok = _sentencepiece_bpe(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", **flags}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    return _write(path, tok, config)


def llama3_dir(path):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = _byte_level_bpe(specials, split=LLAMA3_SPLIT)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
    }
    return _write(path, tok, config)


def qwen2_dir(path):
    tok = _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], split=LLAMA3_SPLIT)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_prefix_space": False,
    }
    return _write(path, tok, config)


def gemma_dir(path):
    tok = _sentencepiece_bpe(["<pad>", "<eos>", "<bos>", "<unk>"], normalizer="gemma")
    config = {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return _write(path, tok, config)


DIRS = {
    "llama2": llama2_dir,
    "llama2-no-bos": lambda p: llama2_dir(p, add_bos_token=False),
    "llama2-bos-eos": lambda p: llama2_dir(p, add_eos_token=True),
    "llama3": llama3_dir,
    "qwen2": qwen2_dir,
    "gemma": gemma_dir,
}


@pytest.mark.parametrize("kind", DIRS)
def test_ids_equal_transformers_and_survive_save(tmp_path, kind):
    directory = DIRS[kind](tmp_path / "src")
    ours = load_tokenizer(directory)
    assert isinstance(ours, PretrainedTokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], (kind, text)
        # what a chat template's rendered text is tokenized with (apply_chat_template)
        plain = theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text, add_special_tokens=False) == plain, (kind, text)
    ids = ours.encode(MIXED_TEXT)
    assert ours.decode(ids) == theirs.decode(ids)
    assert (ours.bos_token_id, ours.eos_token_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.pad_token_id == theirs.pad_token_id
    # saved by lmgen, loaded by transformers and by lmgen: the same ids
    ours.save(tmp_path / "saved")
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    reloaded = load_tokenizer(tmp_path / "saved")
    for text in TEXTS:
        want = theirs(text)["input_ids"]
        assert again(text)["input_ids"] == want, (kind, text)
        assert reloaded.encode(text) == want, (kind, text)
    assert reloaded.chat_template == theirs.chat_template


def test_bos_from_the_post_processor_and_opting_out(tmp_path):
    # transformers 5 takes BOS/EOS from tokenizer.json's post-processor when it loads a
    # directory (add_bos_token/add_eos_token there are not applied): so does lmgen
    with_bos = load_tokenizer(llama2_dir(tmp_path / "a"))
    assert with_bos.encode("hello")[0] == with_bos.bos_token_id == 1
    assert with_bos.bos_token_id not in with_bos.encode("hello", add_special_tokens=False)
    assert load_tokenizer(llama2_dir(tmp_path / "b", add_bos_token=False)).encode("hi")[0] == 1
    assert load_tokenizer(gemma_dir(tmp_path / "c")).encode("hi")[0] != 2
    assert load_tokenizer(qwen2_dir(tmp_path / "d")).bos_token_id is None


@pytest.mark.parametrize("cls", ["LlamaTokenizerFast", "LlamaTokenizer", "GemmaTokenizer"])
@pytest.mark.parametrize("kind", ["llama2", "gemma"])
def test_sentencepiece_classes_rebuild_as_transformers_does(tmp_path, cls, kind):
    """transformers 5 rebuilds a Llama/Gemma tokenizer's normalizer and pre-tokenizer from
    its class, whatever tokenizer.json says; lmgen rebuilds it the same way."""
    directory = DIRS[kind](tmp_path / "d")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": cls}))
    ours = load_tokenizer(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], (cls, kind, text)
    ids = ours.encode(MIXED_TEXT)
    assert ours.decode(ids) == theirs.decode(ids)
    ours.save(tmp_path / "saved")  # the rebuilt tokenizer, as tokenizer.json
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    for text in TEXTS:
        assert again(text)["input_ids"] == theirs(text)["input_ids"], (cls, kind, text)
