"""A token's own bytes and where it starts in the text, for a character split over tokens:
OpenAI's logprobs `bytes` (a client joins them back into the character) and `text_offset`
(characters, as the text counts them), against the text's own UTF-8 and str indices."""

import httpx
import pytest

import lmgen
from lmgen.decoding.results import Choice, TopLogprob
from lmgen.server import create_app, serve_in_thread
from lmgen.server.openai_api import chat_logprobs
from lmgen.tokenizers import text_offsets, token_utf8

TEXT = "héllo 😀 x"


@pytest.fixture(scope="module")
def lm():
    return lmgen.load("shakespeare")  # byte-level BPE without é or 😀 as tokens of their own


def split_ids(lm):
    ids = lm.tokenizer.encode(TEXT)
    assert any("\ufffd" in lm.tokenizer.token_to_str(i) for i in ids)  # a character is split
    return ids


def test_token_bytes_join_into_the_texts_utf8(lm):
    ids = split_ids(lm)
    assert b"".join(token_utf8(lm.tokenizer, i) for i in ids) == TEXT.encode()


def test_text_offsets_count_characters_and_point_into_split_ones(lm):
    ids = split_ids(lm)
    offsets = text_offsets(lm.tokenizer, ids)
    done = b""
    for i, off in zip(ids, offsets, strict=True):  # the whole characters before the token
        assert off == len(done.decode("utf-8", errors="ignore"))
        done += token_utf8(lm.tokenizer, i)
    assert offsets[-1] == TEXT.index("x")


def test_chat_logprobs_bytes_are_the_tokens_own(lm):
    ids = split_ids(lm)
    tok = lm.tokenizer
    top = [[TopLogprob(i, tok.token_to_str(i), -0.5)] for i in ids]
    choice = Choice(0, TEXT, ids, [-0.5] * len(ids), [-0.5] * len(ids), "length", None, top)
    content = chat_logprobs(tok, choice)["content"]
    assert b"".join(bytes(c["bytes"]) for c in content) == TEXT.encode()
    assert b"".join(bytes(c["top_logprobs"][0]["bytes"]) for c in content) == TEXT.encode()


def test_completions_echo_text_offset(lm):
    with serve_in_thread(create_app({"s": lm})) as url:
        body = {"prompt": TEXT, "echo": True, "max_tokens": 0, "logprobs": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=60).json()
    lp = r["choices"][0]["logprobs"]
    assert r["choices"][0]["text"] == TEXT
    assert lp["text_offset"] == text_offsets(lm.tokenizer, split_ids(lm))
    assert lp["text_offset"][-1] == TEXT.index("x")
