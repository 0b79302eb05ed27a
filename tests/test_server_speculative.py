"""Speculative decoding over HTTP (issue 29): `draft_model` names another served model. The
oracles are the same request without a draft (greedy; seeded sampling too when the draft's
tokenizer differs) and `lm.generate(..., draft=...)` in Python; each bad input is a one-line
400 naming its field, before anything is queued."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

import lmgen
from conftest import save_peaky_model
from lmgen.errors import ConfigError
from lmgen.server import create_app, serve_in_thread

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "ROMEO:\nBut soft, what light"
SECOND = "JULIET:\nO Romeo, Romeo"
MESSAGES = [{"role": "user", "content": "What light through yonder window breaks?"}]
GREEDY = {"temperature": 0}
SEEDED = {"temperature": 0.9, "seed": 7}
# SEEDED as generate() keywords
SAMPLED = {"strategy": "sample", **SEEDED}


def near_copy() -> lmgen.LM:
    """The bundled model with its weights moved a little: the same tokenizer, proposals the
    model mostly keeps, and some it rejects (both paths of the rule run)."""
    lm = lmgen.load("shakespeare")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    lm.model.reset_plan()
    return lm


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The model, a draft with its tokenizer ("near"), one with a BPE of its own ("other")."""
    other = save_peaky_model(tmp_path_factory.mktemp("draft") / "other", [PROMPT, SECOND] * 20)
    return {"target": lmgen.load("shakespeare"), "near": near_copy(), "other": lmgen.load(other)}


@pytest.fixture(scope="module")
def url(models):
    with serve_in_thread(create_app(models)) as base:
        yield base


def complete(url, stream=False, **body):
    body = {"model": "target", "prompt": PROMPT, "max_tokens": 24, "stream": stream, **body}
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return events(r) if stream else r.json()


def chat(url, stream=False, **body):
    body = {"model": "target", "messages": MESSAGES, "max_tokens": 24, "stream": stream, **body}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return events(r) if stream else r.json()


def events(r: httpx.Response) -> list[dict]:
    lines = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def streamed_text(chunks: list[dict], key: str) -> dict[int, str]:
    """Each choice's text, put together from its chunks; a streamed error fails the test."""
    out: dict[int, str] = {}
    for c in chunks:
        assert "error" not in c, c
        for ch in c["choices"]:
            piece = ch[key] if key == "text" else ch["delta"].get("content") or ""
            out[ch["index"]] = out.get(ch["index"], "") + piece
    return out


def batched(url) -> int:
    return httpx.get(url + "/health").json()["models"]["target"]["batched_requests"]


# -- the same tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("draft", ["near", "other"])
def test_greedy_equals_no_draft_and_python(url, models, draft):
    before = batched(url)
    spec = complete(url, draft_model=draft, speculative_k=3, **GREEDY)
    assert batched(url) == before  # a job of its own, not the running batch
    plain = complete(url, **GREEDY)
    lm = models["target"]
    python = lm.generate(PROMPT, max_new_tokens=24, draft=models[draft], speculative_k=3)
    assert python.token_ids == lm.generate(PROMPT, max_new_tokens=24).token_ids
    text = spec["choices"][0]["text"]
    assert text == plain["choices"][0]["text"] == python.text
    assert spec["usage"] == plain["usage"]
    assert spec["usage"]["completion_tokens"] == len(python.token_ids)


def test_seeded_sampling_with_a_tokenizer_of_its_own_equals_no_draft(url, models):
    spec = complete(url, draft_model="other", **SEEDED)
    plain = complete(url, **SEEDED)
    python = models["target"].generate(PROMPT, max_new_tokens=24, draft=models["other"], **SAMPLED)
    assert spec["choices"][0]["text"] == plain["choices"][0]["text"] == python.text


def test_seeded_sampling_with_the_same_tokenizer_equals_python(url, models):
    """The rejection rule draws its own uniforms: the tokens follow the model's distribution
    but are not plain sampling's, so Python with the same draft and seed is the oracle."""
    spec = complete(url, draft_model="near", speculative_k=4, **SEEDED)
    python = models["target"].generate(
        PROMPT, max_new_tokens=24, draft=models["near"], speculative_k=4, **SAMPLED
    )
    assert spec["choices"][0]["text"] == python.text
    plain = models["target"].generate(PROMPT, max_new_tokens=24, **SAMPLED)
    assert python.token_ids != plain.token_ids  # the case this test is about


@pytest.mark.parametrize("draft", ["near", "other"])
@pytest.mark.parametrize("kind", ["greedy", "seeded"])
def test_streaming_equals_not_streaming(url, draft, kind):
    body = {"draft_model": draft, **(GREEDY if kind == "greedy" else SEEDED)}
    whole = complete(url, **body)["choices"][0]["text"]
    assert streamed_text(complete(url, stream=True, **body), "text") == {0: whole}
    reply = chat(url, **body)["choices"][0]["message"]["content"]
    assert streamed_text(chat(url, stream=True, **body), "delta") == {0: reply}


def test_chat_equals_no_draft(url):
    for draft in ("near", "other"):
        spec = chat(url, draft_model=draft, **GREEDY)["choices"][0]["message"]["content"]
        assert spec == chat(url, **GREEDY)["choices"][0]["message"]["content"]


def test_several_prompts_and_logprobs(url, models):
    """Several prompts run one after the other, each as alone; logprobs are the model's (the
    prompt's too, with echo)."""
    body = {"prompt": [PROMPT, SECOND], "logprobs": 2, "echo": True, **GREEDY}
    spec = complete(url, draft_model="near", **body)
    plain = complete(url, **body)
    for a, b in zip(spec["choices"], plain["choices"], strict=True):
        assert a["index"] == b["index"] and a["text"] == b["text"]
        assert a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
        assert a["logprobs"]["token_logprobs"] == pytest.approx(
            b["logprobs"]["token_logprobs"], abs=1e-4
        )
    chunks = complete(url, stream=True, draft_model="other", prompt=[PROMPT, SECOND], **GREEDY)
    prompts = zip([PROMPT, SECOND], plain["choices"], strict=True)
    replies = [c["text"].removeprefix(p) for p, c in prompts]
    assert streamed_text(chunks, "text") == dict(enumerate(replies))


def test_beside_the_batch_and_the_drafts_own_requests(url):
    """A speculative request, the draft's own requests and the model's batch at once: each
    the same as alone."""
    bodies = [
        ("target", {"draft_model": "near", **SEEDED}),
        ("near", SEEDED),
        ("target", GREEDY),
        ("other", GREEDY),
        ("target", {"draft_model": "other", **GREEDY}),
    ]
    alone = [complete(url, model=m, **b)["choices"][0]["text"] for m, b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda mb: complete(url, model=mb[0], **mb[1]), bodies))
    assert [r["choices"][0]["text"] for r in together] == alone


def test_models_lists_the_drafts(url):
    ids = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    assert ids == ["target", "near", "other"]


# -- bad input ---------------------------------------------------------------------------------

BAD = [
    ({"draft_model": "missing"}, "draft_model", "is not served here"),
    ({"draft_model": "target"}, "draft_model", "is the model itself"),
    ({"draft_model": 5}, "draft_model", "string"),
    ({"speculative_k": 3}, "speculative_k", "needs draft_model"),
    ({"draft_model": "near", "speculative_k": 0}, "speculative_k", "greater than or equal to 1"),
    ({"draft_model": "near", "speculative_k": 65}, "speculative_k", "less than or equal to 64"),
    ({"draft_model": "near", "n": 2, "seed": 1}, "n", "n must be 1"),
    ({"draft_model": "near", "num_beams": 2}, "draft_model", "not strategy 'beam'"),
    ({"draft_model": "other", "penalty_alpha": 0.6, "top_k": 4}, "draft_model",
     "not strategy 'contrastive'"),
    ({"draft_model": "near", "dola_layers": "high"}, "dola_layers", "draft_model"),
    ({"draft_model": "near", "prompt_lookup_num_tokens": 3}, "prompt_lookup_num_tokens",
     "choose one"),
]  # fmt: skip


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("body", "param", "says"), BAD)
def test_bad_input_is_a_400_naming_the_field(url, path, stream, body, param, says):
    what = {"prompt": PROMPT} if path == "/v1/completions" else {"messages": MESSAGES}
    r = httpx.post(
        url + path,
        json={"model": "target", "max_tokens": 4, "stream": stream, **what, **body},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert says in err["message"] and "\n" not in err["message"]


def test_python_refuses_what_the_server_refuses(models):
    """The same check behind both: a draft never silently drops a setting."""
    lm, near = models["target"], models["near"]
    for kw, param in [
        ({"penalty_alpha": 0.6, "top_k": 4}, "draft"),
        ({"num_beams": 2}, "draft"),
        ({"dola_layers": "high"}, "dola_layers"),
        ({"prompt_lookup_num_tokens": 3}, "prompt_lookup_num_tokens"),
        ({"num_return_sequences": 2, "strategy": "sample"}, "num_return_sequences"),
    ]:
        with pytest.raises(ConfigError) as e:
            lm.generate(PROMPT, max_new_tokens=4, draft=near, **kw)
        assert e.value.param == param


# -- real models -------------------------------------------------------------------------------


@pytest.mark.slow
def test_universal_assisted_decoding_of_real_models_over_http():
    """Gemma 3 270M (a tokenizer that adds BOS) drafted by SmolLM2-135M (another tokenizer),
    both with float weights (quantized blocks round differently over several positions:
    docs/decoding.md): the tokens of the request without a draft and of Python, and the draft's
    proposals are kept (the text compared as the model encodes it, "<bos>" and all)."""
    from lmgen.decoding import SpeculativeStats
    from real_models import gemma3_gguf, smollm2_gguf

    gemma = lmgen.load(gemma3_gguf(), quantize="none")
    smol = lmgen.load(smollm2_gguf(), quantize="none")
    prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of"
    stats = SpeculativeStats()
    python = gemma.generate(prompt, max_new_tokens=32, draft=smol, spec_stats=stats)
    assert python.token_ids == gemma.generate(prompt, max_new_tokens=32).token_ids
    assert stats.accepted > 0 and stats.rounds < 32
    with serve_in_thread(create_app({"gemma": gemma, "smol": smol})) as base:
        body = {"model": "gemma", "prompt": prompt, "max_tokens": 32, "temperature": 0}
        spec = httpx.post(base + "/v1/completions", json={**body, "draft_model": "smol"},
                          timeout=600).json()  # fmt: skip
        plain = httpx.post(base + "/v1/completions", json=body, timeout=600).json()
    assert spec["choices"][0]["text"] == plain["choices"][0]["text"] == python.text
