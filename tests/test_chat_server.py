"""Chat in the server with a model that has a chat template: `/v1/chat/completions` and
`/tokenize` render the messages exactly as transformers' `apply_chat_template` does (the
template's options passed through as vLLM names them), replies stop at the template's end of
turn, and a template that fails costs that request a 400, never the server."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from tests.chat_model import save_chat_model
from tests.chat_templates import QWEN25

import lmgen
from lmgen.generation import generate
from lmgen.server import create_app, serve_in_thread

transformers = pytest.importorskip("transformers")

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France? {\"q\": 'é'}"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
RAISING = "{% if messages[-1].content == 'boom' %}{{ raise_exception('no boom here') }}{% endif %}"
LOOPING = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_chat_model(tmp_path_factory.mktemp("chat") / "qwenish")


@pytest.fixture(scope="module")
def lm(model_dir):
    return lmgen.load(model_dir)


@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def server(model_dir):
    bad = lmgen.load(model_dir)
    bad.chat_template, bad.name = RAISING, "bad"
    slow = lmgen.load(model_dir)
    slow.chat_template = LOOPING
    models = {"chat": lmgen.load(model_dir), "bad": bad, "slow": slow, "plain": lmgen.load()}
    with serve_in_thread(create_app(models)) as url:
        yield url


def post(server, path, body):
    return httpx.post(server + path, json=body, timeout=60)


def hf_ids(out) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_template_read_and_models_card(server, lm):
    assert lm.chat_template == QWEN25
    cards = {m["id"]: m for m in httpx.get(server + "/v1/models").json()["data"]}
    assert cards["chat"]["lmgen"]["chat_template"] is True
    assert "warnings" not in cards["chat"]["lmgen"]
    plain = cards["plain"]["lmgen"]
    assert plain["chat_template"] is False and "no chat template" in plain["warnings"][0]
    info = httpx.get(server + "/tokenizer_info", params={"model": "chat"}).json()
    assert info["chat_template"] == QWEN25


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"add_generation_prompt": False},
        {"continue_final_message": True},
        {"tools": TOOLS},
    ],
)
def test_tokenize_messages_equals_transformers(server, hf, options):
    messages = MESSAGES
    if options.get("continue_final_message"):
        messages = [*MESSAGES, {"role": "assistant", "content": "The capital is"}]
    r = post(server, "/tokenize", {"model": "chat", "messages": messages, **options})
    assert r.status_code == 200, r.text
    hf_options = {"add_generation_prompt": True, **options}
    if options.get("continue_final_message"):
        hf_options["add_generation_prompt"] = False
    expected = hf_ids(hf.apply_chat_template(messages, tokenize=True, **hf_options))
    assert r.json()["tokens"] == expected and r.json()["count"] == len(expected)


def test_chat_template_kwargs_reach_the_template(server, model_dir):
    r = post(
        server,
        "/tokenize",
        {"model": "chat", "messages": MESSAGES, "chat_template_kwargs": {"tools": TOOLS}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"


def test_reply_stops_at_end_of_turn(server, lm, hf):
    im_end = lm.tokenizer.encode("<|im_end|>")
    assert len(im_end) == 1
    (im_end,) = im_end
    eos = lm.tokenizer.eos_token_id
    # three tokens (min_tokens holds the end of turn back), then <|im_end|>, pushed up
    body = {
        "model": "chat",
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 20,
        "min_tokens": 3,
        "logit_bias": {str(im_end): 100},
    }
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    out = r.json()
    ids = hf_ids(hf.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True))
    ref = generate(
        lm,
        ids,
        strategy="greedy",
        max_new_tokens=3,
        logit_bias={im_end: -100.0, eos: -100.0},
    )
    assert out["choices"][0]["message"]["content"] == ref.text
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 3,
        "total_tokens": len(ids) + 3,
    }
    assert "<|im_end|>" not in ref.text
    # the same prompt as a completion has no end of turn: <|im_end|> comes as text
    text = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    body = {k: v for k, v in body.items() if k != "messages"} | {"prompt": text}
    c = post(server, "/v1/completions", body).json()
    assert "<|im_end|>" in c["choices"][0]["text"] and c["choices"][0]["finish_reason"] == "length"


def test_openai_client_chat_and_stream(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=60)
    kw = {"model": "chat", "messages": MESSAGES, "max_tokens": 12, "seed": 3}
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    r = client.chat.completions.create(**kw, tools=TOOLS, tool_choice="auto")
    assert r.choices[0].message.role == "assistant"


def test_failing_templates_are_400s_and_the_server_goes_on(server):
    r = post(
        server,
        "/v1/chat/completions",
        {"model": "bad", "messages": [{"role": "user", "content": "boom"}]},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"] == "the chat template of bad failed: no boom here"
    assert err["param"] == "messages"
    start = time.monotonic()
    r = post(
        server, "/v1/chat/completions", {"model": "slow", "messages": MESSAGES, "stream": True}
    )
    assert r.status_code == 400 and "ran longer than" in r.json()["error"]["message"]
    assert time.monotonic() - start < 30
    r = post(
        server, "/v1/chat/completions", {"model": "chat", "messages": MESSAGES, "max_tokens": 2}
    )
    assert r.status_code == 200


def test_bad_chat_options_are_400s(server):
    both = {"add_generation_prompt": True, "continue_final_message": True}
    r = post(server, "/v1/chat/completions", {"model": "chat", "messages": MESSAGES, **both})
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"
    r = post(
        server, "/v1/chat/completions", {"model": "plain", "messages": MESSAGES, "tools": TOOLS}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


def test_lm_chat_and_chat_stream_stop_at_end_of_turn(lm, hf):
    from lmgen.chat import chat_format, chat_stream

    (im_end,) = lm.tokenizer.encode("<|im_end|>")
    assert chat_format(lm).end_ids == (im_end,)
    assert im_end not in lm.eos_token_ids  # only the chat's end of turn stops at it
    kw = {"strategy": "greedy", "max_new_tokens": 20, "min_new_tokens": 3}
    kw["logit_bias"] = {im_end: 100.0}
    result = lm.chat(MESSAGES, **kw)
    assert result.finish_reason == "eos" and len(result.choices[0].token_ids) == 3
    assert "".join(chat_stream(lm, MESSAGES, **kw)) == result.text
    ids = hf_ids(hf.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True))
    assert result.prompt_token_ids == ids
    plain = lm.generate(ids, **kw)  # a completion writes <|im_end|> and goes on
    assert plain.choices[0].token_ids == [im_end] * 20 and plain.finish_reason == "length"


def test_fit_messages_drops_whole_turns_after_the_system_message(lm):
    from lmgen.chat import fit_messages, prompt_ids
    from lmgen.errors import ConfigError

    system = {"role": "system", "content": "Be brief."}
    turns = []
    for k in range(30):
        turns += [
            {"role": "user", "content": f"Question {k}: what is the capital of France?"},
            {"role": "assistant", "content": "Paris is the capital of France."},
        ]
    messages = [system, *turns, {"role": "user", "content": "And now?"}]
    kept, dropped, ids = fit_messages(lm, messages, reserve=100)
    assert dropped % 2 == 0 and dropped > 0
    assert kept == [system, *turns[dropped:], messages[-1]]
    assert ids == prompt_ids(lm, kept) and len(ids) + 100 <= lm.config.n_positions
    # one turn more would not have fitted
    longer = prompt_ids(lm, [system, *turns[dropped - 2 :], messages[-1]])
    assert len(longer) + 100 > lm.config.n_positions
    with pytest.raises(ConfigError, match="last message needs"):
        fit_messages(lm, [system, {"role": "user", "content": "x " * 2000}], reserve=10)
