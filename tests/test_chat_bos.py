"""A model whose tokenizer adds BOS (Llama's, Gemma's): lmgen's default transcript is encoded as
`generate` encodes a prompt, BOS first, and a template that writes BOS itself gets it once, in
the Python API and in the server alike; OpenAI's text content parts reach a template as one
string (as vLLM joins them), and a message without content is a 400 naming it."""

from __future__ import annotations

import httpx
import pytest
import torch
from tests.chat_model import chatml_bpe
from tests.chat_templates import QWEN25

import lmgen
from lmgen.chat import apply_chat_template, prompt_ids
from lmgen.decoding.session import encode_prompt
from lmgen.lm import LM
from lmgen.server import create_app, serve_in_thread
from lmgen.tokenizers import PretrainedTokenizer

transformers = pytest.importorskip("transformers")

BOS = "<|endoftext|>"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def save_bos_model(path, chat_template=None):
    """A tiny random GPT whose released-model tokenizer adds BOS on encode."""
    tok = PretrainedTokenizer(
        chatml_bpe(), eos_token="<|im_end|>", bos_token=BOS, add_bos_token=True,
        chat_template=chat_template,
    )  # fmt: skip
    torch.manual_seed(0)
    cfg = lmgen.GPTConfig(
        vocab_size=tok.vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=4,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    LM(lmgen.GPT(cfg), tok).save(path)
    return path


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    return save_bos_model(tmp_path_factory.mktemp("bos") / "plain")


@pytest.fixture(scope="module")
def templated_dir(tmp_path_factory):
    # Qwen's template with BOS written first, as Llama's and Gemma's templates write it
    return save_bos_model(tmp_path_factory.mktemp("bos") / "templated", "{{ bos_token }}" + QWEN25)


@pytest.fixture(scope="module")
def server(plain_dir, templated_dir):
    models = {"plain": lmgen.load(plain_dir), "templated": lmgen.load(templated_dir)}
    with serve_in_thread(create_app(models)) as url:
        yield url


def post(server, path, body):
    return httpx.post(server + path, json=body, timeout=60)


def test_the_tokenizer_adds_bos(plain_dir):
    lm = lmgen.load(plain_dir)
    assert lm.tokenizer.encode("Hi")[0] == lm.tokenizer.bos_token_id
    assert lm.chat_template is None


def test_default_transcript_is_encoded_as_generate_encodes_it(plain_dir):
    lm = lmgen.load(plain_dir)
    text = apply_chat_template(lm, MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == "User: What is the capital of France?\nAssistant:"
    ids = prompt_ids(lm, MESSAGES)
    assert ids == encode_prompt(lm, text)  # what `lm.generate(text)` reads
    assert ids[0] == lm.tokenizer.bos_token_id and ids.count(lm.tokenizer.bos_token_id) == 1
    assert apply_chat_template(lm, MESSAGES, add_generation_prompt=True) == ids
    # lm.chat reads the same prompt
    assert lm.chat(MESSAGES, max_new_tokens=1).prompt_token_ids == ids


def test_a_template_that_writes_bos_gets_it_once_as_in_transformers(templated_dir):
    lm = lmgen.load(templated_dir)
    hf = transformers.AutoTokenizer.from_pretrained(str(templated_dir))
    want = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    want = list(want["input_ids"] if hasattr(want, "keys") else want)  # transformers 4 or 5
    assert want.count(lm.tokenizer.bos_token_id) == 1
    assert prompt_ids(lm, MESSAGES) == want


@pytest.mark.parametrize("name", ["plain", "templated"])
def test_server_prompt_equals_the_python_apis(server, plain_dir, templated_dir, name):
    lm = lmgen.load(plain_dir if name == "plain" else templated_dir)
    want = prompt_ids(lm, MESSAGES)
    r = post(server, "/tokenize", {"model": name, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == want
    r = post(server, "/v1/lmgen/chat_prompt", {"model": name, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    assert r.json()["token_ids"] == want
    body = {"model": name, "messages": MESSAGES, "max_tokens": 2, "temperature": 0}
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(want)
    reply = lm.chat(MESSAGES, max_new_tokens=2, strategy="greedy").text
    assert r.json()["choices"][0]["message"]["content"] == reply


def test_tokenize_add_special_tokens(server, plain_dir):
    lm = lmgen.load(plain_dir)
    r = post(server, "/tokenize", {"model": "plain", "prompt": "Hi"})
    assert r.json()["tokens"] == lm.tokenizer.encode("Hi")  # BOS first, as generate
    r = post(server, "/tokenize", {"model": "plain", "prompt": "Hi", "add_special_tokens": False})
    assert r.json()["tokens"] == lm.tokenizer.encode("Hi", add_special_tokens=False)
    r = post(server, "/tokenize",
             {"model": "plain", "messages": MESSAGES, "add_special_tokens": False})  # fmt: skip
    assert r.json()["tokens"][0] != lm.tokenizer.bos_token_id


@pytest.mark.parametrize("name", ["plain", "templated"])
def test_text_content_parts_are_joined_by_newlines(server, name):
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "the capital?"}]
    joined = post(server, "/tokenize", {"model": name, "messages": [
        {"role": "user", "content": "What is\nthe capital?"}]}).json()["tokens"]  # fmt: skip
    r = post(server, "/tokenize", {"model": name, "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == joined
    body = {"model": name, "max_tokens": 1, "messages": [{"role": "user", "content": parts}]}
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("content", ["missing", None])
def test_a_message_without_content_is_a_400_naming_it(server, content):
    user = {"role": "user"} if content == "missing" else {"role": "user", "content": None}
    body = {"model": "templated", "max_tokens": 1,
            "messages": [{"role": "system", "content": "Be brief."}, user]}  # fmt: skip
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "messages[1]" in error["message"] and "no content" in error["message"]
    assert error["param"] == "messages"
    # an assistant's message may come without content (its tool calls), where the template
    # takes it (lmgen's default transcript does; Qwen's template here reads its content)
    body["model"] = "plain"
    body["messages"] = [{"role": "user", "content": "Hi"}, {"role": "assistant"},
                        {"role": "user", "content": "Hi"}]  # fmt: skip
    assert post(server, "/v1/chat/completions", body).status_code == 200
