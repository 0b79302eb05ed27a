"""What evaluation harnesses and scoring clients send: prompts as token ids, scoring-only
requests (`max_tokens: 0` with `echo`), the model's limits in `/v1/models`, and vLLM's
`/tokenize`, `/detokenize` and `/tokenizer_info`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

import lmgen
from conftest import save_peaky_model
from lmgen.generation import generate
from lmgen.server import create_app, serve_in_thread
from lmgen.training.evaluate import evaluate_text

TEXTS = [
    "To be, or not to be: that is the question.\n\nWhether 'tis nobler in the mind to suffer",
    "The quick brown fox jumps over the lazy dog;\n\n\nthe lazy dog does not mind.",
] * 12
KEY = "sk-tokens-0123456789"
CLIENT = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_peaky_model(tmp_path_factory.mktemp("tokens") / "tiny", TEXTS)


@pytest.fixture(scope="module")
def lm(model_dir):
    return lmgen.load(model_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)})) as url:
        yield url


def post(url, path, body):
    return CLIENT.post(url + path, json=body)


def log_softmax_of(lm, ids: list[int]) -> list[float]:
    """The model's own log-probability of each token after the first, given those before."""
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(torch.tensor([ids]))[0].float(), -1)
    return [float(logp[k - 1, t]) for k, t in enumerate(ids) if k > 0]


# -- token-id prompts -----------------------------------------------------------------------


def test_a_token_id_prompt_is_the_same_as_its_text(server, lm):
    ids = lm.tokenizer.encode("To be, or not")
    body = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}
    by_text = post(server, "/v1/completions", {"prompt": "To be, or not", **body}).json()
    by_ids = post(server, "/v1/completions", {"prompt": ids, **body}).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    ref = generate(lm, "To be, or not", max_new_tokens=8, ignore_eos=True)
    assert by_ids["choices"][0]["text"] == ref.text
    assert by_ids["usage"]["prompt_tokens"] == len(ids)
    # a list of them, with n: choice k*n + j belongs to prompt k
    two = [ids, lm.tokenizer.encode("The quick")]
    r = post(server, "/v1/completions", {"prompt": two, "n": 2, "seed": 3, "max_tokens": 4})
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2, 3]
    assert r.json()["usage"]["prompt_tokens"] == len(two[0]) + len(two[1])


def test_echo_returns_exactly_the_tokens_sent_with_their_logprobs(server, lm):
    """ "To" spelled as two tokens, which the tokenizer merges into one when it encodes the
    text: the server scores the ids it was given, not a re-tokenisation of their text."""
    tok = lm.tokenizer
    assert len(tok.encode("To")) == 1
    spelled = [tok.encode(ch)[0] for ch in "To"]
    ids = spelled + tok.encode(" be, or not to be")
    assert tok.encode(tok.decode(ids)) != ids
    r = post(
        server,
        "/v1/completions",
        {"prompt": [ids], "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0},
    )
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"][: len(ids)] == [lm.tokenizer.token_to_str(t) for t in ids]
    assert len(lp["tokens"]) == len(ids) + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1 : len(ids)] == pytest.approx(log_softmax_of(lm, ids), abs=1e-5)
    # is_greedy as lm-eval computes it: the token's logprob against the best alternative
    for tok_lp, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        assert tok_lp <= max(top.values()) + 1e-6


@pytest.mark.parametrize(
    "prompt, why",
    [
        ([], "must not be empty"),
        ([[]], "must not be empty"),
        ([[1, 2], []], "must not be empty"),
        ([-1], "greater than or equal to 0"),
        ([300, 10**9], "not in this model's vocabulary"),
        ([[5], [2**63]], "not in this model's vocabulary"),
        ([1, "a"], "valid integer"),
        (["a", 1], "valid string"),
        ([1, 2.5], "valid integer"),
        ([True, 1], "valid"),
        ([[1, [2]]], "valid integer"),
    ],
)
def test_bad_token_id_prompts_are_400_naming_the_problem(server, prompt, why):
    r = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "prompt" and why in err["message"], err


def test_huge_token_id_prompts_are_refused_with_the_limit(server):
    r = CLIENT.post(
        server + "/v1/completions",
        content=json.dumps({"prompt": [1] * 10**6}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and "1048576 bytes" in r.json()["error"]["message"]
    r = post(server, "/v1/completions", {"prompt": [1] * 70000, "max_tokens": 1})
    assert r.status_code == 400 and "at most 65536" in r.json()["error"]["message"]
    r = post(server, "/v1/completions", {"prompt": [1] * 200, "max_tokens": 1})
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "context of 128" in err["message"]


def test_too_many_prompts_names_the_limit(server):
    for prompts in (["x"] * 33, [[1]] * 33):
        r = post(server, "/v1/completions", {"prompt": prompts, "max_tokens": 1})
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith("at most 32 prompts in one request, got 33")


# -- scoring only -------------------------------------------------------------------------------


def test_max_tokens_0_with_echo_scores_the_prompt(server, lm):
    ids = lm.tokenizer.encode("Whether 'tis nobler in the mind")
    r = post(
        server, "/v1/completions", {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 2}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    (c,) = out["choices"]
    assert c["text"] == lm.tokenizer.decode(ids) and c["finish_reason"] == "length"
    lp = c["logprobs"]
    assert lp["tokens"] == [lm.tokenizer.token_to_str(t) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(log_softmax_of(lm, ids), abs=1e-5)
    assert all(len(d) == 2 for d in lp["top_logprobs"][1:])
    assert out["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 0,
        "total_tokens": len(ids),
    }
    # the same numbers as the prompt part of an echo that generates
    gen = post(
        server,
        "/v1/completions",
        {"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 2, "temperature": 0},
    ).json()["choices"][0]["logprobs"]
    assert gen["token_logprobs"][: len(ids)] == lp["token_logprobs"]
    # a prompt that fills the whole context can be scored
    full = (ids * 20)[:128]
    r = post(server, "/v1/completions", {"prompt": full, "max_tokens": 0, "echo": True})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None


def test_max_tokens_0_text_prompts_stream_and_openai_client(server, lm):
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0)
    r = client.completions.create(
        model="tiny", prompt=["To be", "or not"], max_tokens=0, echo=True, logprobs=0
    )
    assert [c.text for c in r.choices] == ["To be", "or not"]
    assert r.choices[0].logprobs.token_logprobs[0] is None and r.usage.completion_tokens == 0
    chunks = list(
        client.completions.create(
            model="tiny", prompt="To be", max_tokens=0, echo=True, stream=True
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks) == "To be"


def test_max_tokens_0_without_echo_says_why(server):
    r = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 0})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and "only with echo" in err["message"]
    r = post(server, "/v1/completions", {"prompt": [1] * 129, "max_tokens": 0, "echo": True})
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_rolling_loglikelihood_through_the_server_equals_lmgen_eval(server, lm):
    """`lmgen eval`'s windows, each sent as token ids with max_tokens 0: the same total."""
    text = " ".join(TEXTS[:6])
    window, stride = 100, 50  # a window of 100 targets is a prompt of 101 tokens
    ref = evaluate_text(lm, text, window=window, stride=stride)
    seq = [lm.tokenizer.eos_token_id] + lm.tokenizer.encode(text)
    assert len(seq) > 2 * window  # several windows
    total, count, begin, scored_to = 0.0, 0, 0, 1
    while scored_to < len(seq):
        end = min(begin + window + 1, len(seq))
        r = post(
            server,
            "/v1/completions",
            {"prompt": seq[begin:end], "max_tokens": 0, "echo": True, "logprobs": 0},
        )
        lps = r.json()["choices"][0]["logprobs"]["token_logprobs"]
        part = lps[scored_to - begin :]
        total -= sum(part)
        count += len(part)
        scored_to, begin = end, begin + stride
    assert count == ref.tokens
    assert total == pytest.approx(ref.nll, rel=1e-5)


# -- limits and the tokenizer -----------------------------------------------------------------


def test_models_advertise_their_limits(server, lm):
    card = CLIENT.get(server + "/v1/models").json()["data"][0]
    assert card["max_model_len"] == 128 and card["vocab_size"] == lm.config.vocab_size


def test_tokenize_detokenize_and_tokenizer_info_as_vllm(server, lm):
    text = "To be, or not\n\nto be"
    r = post(server, "/tokenize", {"model": "tiny", "prompt": text, "add_special_tokens": False})
    assert r.json() == {
        "count": len(lm.tokenizer.encode(text)),
        "max_model_len": 128,
        "tokens": lm.tokenizer.encode(text),
        "token_strs": None,
    }
    r = post(server, "/detokenize", {"model": "tiny", "tokens": lm.tokenizer.encode(text)})
    assert r.json() == {"prompt": text}
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == lm.tokenizer.encode("User: hi\nAssistant:")
    info = CLIENT.get(server + "/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 128
    eos = post(server, "/tokenize", {"prompt": info["eos_token"]}).json()["tokens"]
    assert eos == [lm.tokenizer.eos_token_id]  # what lm-eval's remote tokenizer relies on
    for path, body in [
        ("/detokenize", {"tokens": [10**6]}),
        ("/detokenize", {"tokens": [-1]}),
        ("/tokenize", {}),
        ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "y"}]}),
        ("/tokenize", '{"prompt": "\\udcff"}'),
    ]:
        if isinstance(body, str):  # raw JSON: a lone surrogate that httpx cannot encode
            headers = {"Content-Type": "application/json"}
            r = CLIENT.post(server + path, content=body.encode(), headers=headers)
        else:
            r = post(server, path, body)
        assert r.status_code == 400 and r.json()["error"]["message"], (path, body)


def test_the_tokenizer_routes_need_the_key(model_dir):
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)}, api_key=KEY)) as url:
        assert CLIENT.post(url + "/tokenize", json={"prompt": "x"}).status_code == 401
        assert CLIENT.get(url + "/tokenizer_info").status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert CLIENT.post(url + "/tokenize", json={"prompt": "x"}, headers=auth).status_code == 200
