"""The playground's own endpoints, over HTTP, against lmgen's numbers: `/v1/lmgen/pipeline`
(the distribution after each processor, seeded draws) against `lmgen.next_token`, closed forms
and `generate`; `/v1/lmgen/settings` against the declarations in lmgen.settings."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import torch

import lmgen
from conftest import save_peaky_model
from lmgen import generate, next_token
from lmgen.server import create_app, serve_in_thread
from lmgen.settings import GROUPS, SETTINGS

TEXTS = ["To be, or not to be: that is the question.", "The quick brown fox jumps."] * 12
SETTINGS_BODY = {"temperature": 0.7, "top_k": 6, "top_p": 0.9, "repetition_penalty": 1.3}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return lmgen.load(save_peaky_model(tmp_path_factory.mktemp("pipeline") / "tiny", TEXTS))


@pytest.fixture(scope="module")
def url(lm):
    with serve_in_thread(create_app({"tiny": lm})) as u:
        yield u


def post(url, path, body):
    return httpx.post(url + path, json=body, timeout=60)


def pipeline(url, **body):
    r = post(url, "/v1/lmgen/pipeline", {"prompt": "To be", "top": 12, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_pipeline_stages_in_chain_order_against_next_token(url, lm):
    out = pipeline(url, **SETTINGS_BODY)
    ref = next_token(lm, "To be", top=12, strategy="sample", **SETTINGS_BODY)
    names = [s["name"] for s in out["stages"]]
    assert names == ["model", "RepetitionPenalty", "Temperature", "TopK", "TopP"]
    assert [s["description"] for s in out["stages"][1:]] == ref.chain
    shown = [t["token_id"] for t in out["tokens"]]
    raw = ref.logits.float().softmax(-1)
    final = ref.processed_logits.float().softmax(-1)
    first, last = out["stages"][0], out["stages"][-1]
    assert first["probs"] == pytest.approx([float(raw[t]) for t in shown], abs=1e-6)
    assert last["probs"] == pytest.approx([float(final[t]) for t in shown], abs=1e-6)
    kept = torch.isfinite(ref.processed_logits)
    assert last["candidates"] == int(kept.sum()) == out["kept_count"]
    assert first["candidates"] == out["vocab_size"]
    assert last["kept"] == [bool(kept[t]) for t in shown]
    p = final[kept].double()
    assert last["entropy_bits"] == pytest.approx(float(-(p * p.log2()).sum()), abs=1e-4)
    # each shown token's text is what appending it adds to the prompt
    ids = ref.prompt_token_ids
    for t in out["tokens"][:3]:
        assert lm.tokenizer.decode(ids + [t["token_id"]]) == "To be" + t["text"]


def test_pipeline_temperature_stage_is_the_closed_form(url, lm):
    out = pipeline(url, temperature=0.5, top_k=3)
    ref = next_token(lm, "To be", top=12, strategy="sample")
    shown = [t["token_id"] for t in out["tokens"]]
    scaled = (ref.logits.double() / 0.5).softmax(-1)
    temp = out["stages"][1]
    assert temp["name"] == "Temperature" and temp["candidates"] == out["vocab_size"]
    assert temp["probs"] == pytest.approx([float(scaled[t]) for t in shown], abs=1e-6)
    topk = out["stages"][2]
    assert topk["candidates"] == 3 and sum(topk["kept"]) == 3
    three = scaled[shown[:3]].sum()  # the model's top 3 (temperature keeps the order)
    assert topk["probs"][:3] == pytest.approx([float(scaled[t] / three) for t in shown[:3]])
    assert topk["probs"][3:] == [0.0] * (len(shown) - 3)


def test_draws_match_the_probabilities_and_the_seeded_sampler(url, lm):
    out = pipeline(url, temperature=1.2, top_k=8, seed=7, draws=4000)
    counts = {int(k): v for k, v in out["draws"]["counts"].items()}
    assert sum(counts.values()) == 4000 and out["draws"]["seed"] == 7
    shown = [t["token_id"] for t in out["tokens"]]
    probs = dict(zip(shown, out["stages"][-1]["probs"], strict=True))
    assert set(counts) <= {t for t, p in probs.items() if p > 0}  # never a removed token
    # chi-square goodness of fit over the kept tokens (all among those shown)
    kept = [t for t, p in probs.items() if p > 0]
    assert sum(probs[t] for t in kept) == pytest.approx(1.0, abs=1e-5)
    stat = sum((counts.get(t, 0) - 4000 * probs[t]) ** 2 / (4000 * probs[t]) for t in kept)
    assert stat < chi2_critical(len(kept) - 1)
    # the first draw is the generation loop's first token with the same seed
    one = pipeline(url, temperature=1.2, top_k=8, seed=7, draws=1)
    (first,) = (int(k) for k in one["draws"]["counts"])
    ref = generate(lm, "To be", strategy="sample", seed=7, temperature=1.2, top_k=8,
                   max_new_tokens=1, ignore_eos=True)  # fmt: skip
    assert first == ref.choices[0].token_ids[0]
    # a seed gives the same counts again
    assert pipeline(url, temperature=1.2, top_k=8, seed=7, draws=4000)["draws"] == out["draws"]


def test_greedy_draws_are_the_greedy_token(url, lm):
    out = pipeline(url, strategy="greedy", repetition_penalty=1.5, draws=50)
    ref = next_token(lm, "To be", strategy="greedy", repetition_penalty=1.5)
    assert out["draws"]["counts"] == {str(ref.greedy_token_id): 50}
    assert out["draws"]["strategy"] == "greedy"


def chi2_critical(dof: int, alpha: float = 0.001) -> float:
    """The chi-square critical value: scipy's, or the Wilson-Hilferty closed form."""
    try:
        from scipy.stats import chi2
    except ImportError:
        z = 3.090232  # the normal quantile at 1 - 0.001
        return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    return float(chi2.ppf(1 - alpha, dof))


@pytest.mark.parametrize(
    "body, param",
    [
        ({"draws": -1}, "draws"),
        ({"draws": 10**7}, "draws"),
        ({"draws": "many"}, "draws"),
        ({"draw": 5}, "draw"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_pipeline_bad_input_names_the_parameter(url, body, param):
    r = post(url, "/v1/lmgen/pipeline", {"prompt": "x", **body})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and "\n" not in error["message"]
    if param == "draw":
        assert "did you mean 'draws'" in error["message"]


def test_settings_endpoint_is_the_declarations(url):
    out = httpx.get(url + "/v1/lmgen/settings").json()
    assert [g["name"] for g in out["groups"]] == list(GROUPS)
    assert [s["name"] for s in out["settings"]] == [s.name for s in SETTINGS]
    by = {s["name"]: s for s in out["settings"]}
    for s in SETTINGS:
        got = by[s.name]
        assert got["group"] == s.group and got["help"] == s.help
        assert got["default"] == json.loads(json.dumps(s.default))
        refs = {k: getattr(s, k) for k in ("openai", "vllm", "llama_cpp", "transformers")}
        assert got["references"] == {k: v for k, v in refs.items() if v}
    assert by["top_k"]["requests"] == {
        "next": "top_k",
        "completions": "top_k",
        "chat": "top_k",
        "beam": None,
    }
    assert by["max_new_tokens"]["requests"]["completions"] == "max_tokens"
    assert by["max_new_tokens"]["requests"]["next"] is None
    assert by["seed"]["range"]["high"] == 2**53  # the server's cap
    assert by["temperature"]["range"]["also"] == [0]
