"""Tokenizers: the tutorial's word vocabulary, characters, byte-level BPE; saving, loading,
and agreement with `transformers.AutoTokenizer` on what we save."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_VOCAB, tiny_corpus
from lmgen.errors import ConfigError, ModelLoadError
from lmgen.tokenizers import (
    EOS,
    UNK,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
)

TUTORIAL_VOCAB = ["hello", "world", "this", "is", "a", "test", "model", "GPT", "language", "AI"]
PROPERTY = settings(max_examples=150, deadline=None)


def auto_tokenizer(directory):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(directory)


# --- word -------------------------------------------------------------------------------------


def test_word_tokenizer_tutorial_example():
    tok = WordTokenizer(TUTORIAL_VOCAB)
    assert tok.vocab_size == 10
    assert tok.encode("hello world this is") == [0, 1, 2, 3]
    assert tok.encode("GPT language model AI") == [7, 8, 6, 9]
    assert tok.decode([0, 1, 2, 3]) == "hello world this is"
    assert tok.token_to_str(7) == "GPT"
    assert isinstance(tok, Tokenizer)


def test_word_tokenizer_unknown_word_raises_by_default():
    tok = WordTokenizer(TUTORIAL_VOCAB)
    with pytest.raises(ConfigError, match=r"'banana'.*unknown='unk'"):
        tok.encode("hello banana world")


def test_word_tokenizer_unknown_word_maps_to_unk():
    tok = WordTokenizer(TUTORIAL_VOCAB, unknown="unk")
    unk = tok.token_to_id(UNK)
    assert unk == 10 and tok.vocab_size == 11
    assert tok.encode("hello banana world") == [0, unk, 1]
    assert tok.decode([0, unk, 1]) == f"hello {UNK} world"


def test_word_tokenizer_rejects_bad_arguments():
    with pytest.raises(ConfigError):
        WordTokenizer(TUTORIAL_VOCAB, unknown="drop")
    with pytest.raises(ConfigError):
        WordTokenizer([])
    with pytest.raises(ConfigError):
        WordTokenizer(["two words"])


@pytest.mark.parametrize("unknown", ["error", "unk"])
def test_word_tokenizer_save_load_keeps_behaviour(tmp_path, unknown):
    tok = WordTokenizer(TUTORIAL_VOCAB, unknown=unknown)
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, WordTokenizer)
    assert again.unknown == unknown
    assert again.encode("hello world this is") == [0, 1, 2, 3]
    hf = auto_tokenizer(tmp_path)
    assert hf("hello world this is")["input_ids"] == [0, 1, 2, 3]
    if unknown == "unk":
        assert again.encode("hello banana") == hf("hello banana")["input_ids"] == [0, 10]
    else:
        with pytest.raises(ConfigError):
            again.encode("hello banana")


# --- char -------------------------------------------------------------------------------------

CHAR_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\r\n\tcafé 🙂 日本"


def test_char_tokenizer_round_trip_and_ids():
    tok = CharTokenizer.from_text(CHAR_TEXT)
    assert tok.vocab_size == len(set(CHAR_TEXT)) + 1  # + <unk>
    ids = tok.encode(CHAR_TEXT)
    assert len(ids) == len(CHAR_TEXT)
    assert tok.decode(ids) == CHAR_TEXT
    assert [tok.token_to_str(i) for i in ids] == list(CHAR_TEXT)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=sorted(set(CHAR_TEXT))))
def test_char_tokenizer_round_trip_property(text):
    tok = CharTokenizer.from_text(CHAR_TEXT)
    assert tok.decode(tok.encode(text)) == text


def test_char_tokenizer_unknown_character():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ConfigError, match="'z'"):
        tok.encode("abz")
    lenient = CharTokenizer(tok.backend, unknown="unk")
    assert lenient.encode("abz") == [0, 1, tok.token_to_id(UNK)]
    with pytest.raises(ConfigError):
        CharTokenizer.from_text("")


def test_char_tokenizer_save_load(tmp_path):
    tok = CharTokenizer.from_text(CHAR_TEXT)
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer)
    assert again.encode(CHAR_TEXT) == tok.encode(CHAR_TEXT)
    assert again.decode(again.encode(CHAR_TEXT)) == CHAR_TEXT
    assert auto_tokenizer(tmp_path)(CHAR_TEXT)["input_ids"] == tok.encode(CHAR_TEXT)


# --- BPE --------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [257, 300, TINY_VOCAB])
def test_bpe_trains_to_chosen_vocab_size(vocab_size):
    tok = BPETokenizer.train(texts=tiny_corpus(), vocab_size=vocab_size)
    assert tok.vocab_size == vocab_size
    assert tok.eos_token_id == tok.token_to_id(EOS) == 0
    assert tok.bos_token_id == tok.eos_token_id


def test_bpe_trains_from_files(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(tiny_corpus()), encoding="utf-8")
    tok = BPETokenizer.train([path], vocab_size=300)
    assert tok.vocab_size == 300
    assert tok.decode(tok.encode("the lazy dog")) == "the lazy dog"


def test_bpe_vocab_size_too_small():
    with pytest.raises(ConfigError, match="257"):
        BPETokenizer.train(texts=["abc"], vocab_size=100)


def test_bpe_merges_shorten_common_words(tiny_tokenizer):
    assert len(tiny_tokenizer.encode(" the")) == 1
    assert tiny_tokenizer.encode(EOS) == [tiny_tokenizer.eos_token_id]


@PROPERTY
@given(st.text())
def test_bpe_round_trip_any_unicode(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert all(0 <= i < tiny_tokenizer.vocab_size for i in ids)
    assert tiny_tokenizer.decode(ids) == text


def test_bpe_round_trip_edge_cases(tiny_tokenizer):
    for text in [
        "",
        " ",
        "  \n\n\t",
        "\x00",
        "\r\n",
        "\U0010ffff",
        "e\u0301",
        "🙂🙂🙂",
        f"a{EOS}b",
        "'s 've 're",
    ]:
        assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_bpe_save_writes_tokenizer_json_and_loads(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["model"]["type"] == "BPE"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == EOS
    again = load_tokenizer(tmp_path)
    assert isinstance(again, BPETokenizer)
    assert again.vocab_size == tiny_tokenizer.vocab_size
    assert again.eos_token_id == tiny_tokenizer.eos_token_id
    text = "\n".join(tiny_corpus()[:6])
    assert again.encode(text) == tiny_tokenizer.encode(text)


def test_bpe_loads_gpt2_style_vocab_and_merges(tmp_path, tiny_tokenizer):
    tiny_tokenizer.backend.model.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    direct = BPETokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert loaded.eos_token_id == direct.eos_token_id == tiny_tokenizer.eos_token_id
    text = "\n".join(tiny_corpus()[:6]) + " zebra Ωμέγα"
    assert loaded.encode(text) == direct.encode(text) == tiny_tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    # As GPT-2's own files: <|endoftext|> in vocab.json is one special token, not 13 bytes.
    assert loaded.encode(f"end{EOS}") == tiny_tokenizer.encode(f"end{EOS}")
    assert loaded.encode(EOS) == [loaded.eos_token_id]


def test_handmade_vocab_and_merges(tmp_path):
    # GPT-2's byte-to-unicode map sends the space (0x20) to "Ġ".
    alphabet = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    vocab = {EOS: 0, **{c: i + 1 for i, c in enumerate(alphabet)}}
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = load_tokenizer(tmp_path)
    assert tok.encode("hello world") == [
        vocab["hello"],
        vocab["Ġw"],
        vocab["o"],
        vocab["r"],
        vocab["l"],
        vocab["d"],
    ]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.eos_token_id == 0


def test_broken_vocab_files_raise_model_load_error(tmp_path):
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(ModelLoadError, match=r"vocab\.json"):
        load_tokenizer(tmp_path)


def test_no_tokenizer_files(tmp_path):
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json.*vocab\.json"):
        load_tokenizer(tmp_path)


# --- transformers.AutoTokenizer reads what we save --------------------------------------------


@pytest.fixture(scope="module")
def saved_bpe(tmp_path_factory, tiny_tokenizer):
    directory = tmp_path_factory.mktemp("bpe")
    tiny_tokenizer.save(directory)
    return directory, auto_tokenizer(directory)


def test_auto_tokenizer_special_tokens(saved_bpe, tiny_tokenizer):
    _, hf = saved_bpe
    assert len(hf) == tiny_tokenizer.vocab_size
    assert hf.eos_token == EOS and hf.eos_token_id == tiny_tokenizer.eos_token_id
    assert hf(f"hi{EOS}")["input_ids"] == tiny_tokenizer.encode(f"hi{EOS}")


@settings(max_examples=60, deadline=None)
@given(text=st.text())
def test_auto_tokenizer_encodes_identically(saved_bpe, tiny_tokenizer, text):
    _, hf = saved_bpe
    ids = tiny_tokenizer.encode(text)
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids) == text


def _three_kinds(tiny_tokenizer):
    return {
        "word": WordTokenizer(["ROMEO", "but", "soft"], unknown="unk"),
        "char": CharTokenizer.from_text("ROMEO: but soft"),
        "bpe": tiny_tokenizer,
    }


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_encode_refuses_text_that_is_not_unicode(kind, tiny_tokenizer):
    """A lone surrogate (a non-UTF-8 byte read with surrogateescape) is refused by every kind
    with its position, never a TypeError from the backend, never replaced."""
    tok = _three_kinds(tiny_tokenizer)[kind]
    with pytest.raises(ConfigError, match=r"lone surrogate at position 6 \('\\udcff'\)") as e:
        tok.encode("ROMEO \udcff soft")
    assert e.value.param == "prompt"
    assert tok.encode("ROMEO but soft")  # valid text still encodes
