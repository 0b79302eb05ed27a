"""The playground as a teaching tool, in headless Chromium (as test_playground_browser.py):
controls generated from every setting's declaration, the pipeline strip (one chart per
processor), forcing a token and branching, 1,000 draws against the probabilities (a
chi-square test at a fixed seed), and two settings side by side. Each checked against the
API run alone or against lmgen.settings."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from tests.test_playground_api import chi2_critical
from tests.test_playground_browser import (  # noqa: F401
    ARTIFACTS,
    TEXTS,
    browser_page,
    expect,
    model_dir,
)

import lmgen
from lmgen.server import create_app, serve_in_thread
from lmgen.settings import BY_NAME, GROUPS, SETTINGS

pytestmark = pytest.mark.browser
REFERENCES = ("openai", "vllm", "llama_cpp", "transformers")


@pytest.fixture(scope="module")
def url(model_dir):  # noqa: F811
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)})) as u:
        yield u


def open_page(page, url, prompt="To be, or"):
    page.goto(url + "/")
    page.wait_for_selector("#pipeline li.stage")
    page.fill("#text", prompt)
    expect(page.locator("#dist-caption")).to_contain_text(prompt)


def set_value(page, name, value):
    """Sets a generated control (a number box, a slider or a text box) as a user would."""
    page.locator(f"#{name}").evaluate("e => e.closest('details').open = true")
    page.locator(f"#{name}").fill(str(value))
    page.locator(f"#{name}").dispatch_event("change")


def test_every_setting_has_a_generated_control(browser_page, url):  # noqa: F811
    page = browser_page
    page.goto(url + "/")
    page.wait_for_selector(".control[data-setting]")
    groups = page.eval_on_selector_all(
        ".control[data-setting]",
        "els => els.map(e => [e.dataset.setting, e.closest('details').dataset.group, e.title])",
    )
    by_group = [s.name for g in GROUPS for s in SETTINGS if s.group == g]
    assert [g[0] for g in groups] == by_group  # every one, by group, in declaration order
    for (name, group, title), s in zip(groups, [BY_NAME[n] for n in by_group], strict=True):
        assert group == s.group, name
        for ref in REFERENCES:
            if getattr(s, ref):  # the references' names in the tooltip
                assert getattr(s, ref) in title, (name, ref)
        assert s.help in title
    # the groups are docs/settings.md's, in its order
    titles = page.locator("#controls details.group > summary").all_inner_texts()
    md = (ARTIFACTS.parent / "docs" / "settings.md").read_text()
    headings = [h[3:] for h in md.splitlines() if h.startswith("## ")]
    assert [re.sub(r" \(\d+\)$", "", t) for t in titles] == headings
    assert page.problems == []


def test_pipeline_strip_one_chart_per_processor(browser_page, url):  # noqa: F811
    page = browser_page
    open_page(page, url)
    for name, value in (("temperature", 0.7), ("top_k", 5), ("repetition_penalty", 1.3)):
        set_value(page, name, value)
    page.locator("#controls details[data-group=sampling]").evaluate("d => d.open = true")
    page.locator("#top_p").fill("0.9")
    page.locator("#top_p").dispatch_event("input")
    expect(page.locator("#pipeline li.stage")).to_have_count(5)
    body = {"prompt": "To be, or", "top": 15, "temperature": 0.7, "top_k": 5, "top_p": 0.9,
            "repetition_penalty": 1.3, "strategy": "sample"}  # fmt: skip
    api = httpx.post(url + "/v1/lmgen/pipeline", json=body, timeout=30).json()
    names = page.eval_on_selector_all("#pipeline li.stage", "els => els.map(e => e.dataset.name)")
    assert names == [s["name"] for s in api["stages"]]
    assert names == ["model", "RepetitionPenalty", "Temperature", "TopK", "TopP"]
    stats = page.locator("#pipeline li.stage .stats").all_inner_texts()
    for text, stage in zip(stats, api["stages"], strict=True):
        assert f"H = {stage['entropy_bits']:.2f} bits" in text
        assert f"{stage['candidates']} left" in text
    # top-k's chart: the removed tokens stay, greyed, the rest renormalised
    topk = page.locator("#pipeline li.stage[data-name=TopK] li.mini-bar")
    assert topk.count() == len(api["tokens"])
    removed = page.locator("#pipeline li.stage[data-name=TopK] li.mini-bar.removed").count()
    assert removed == len(api["tokens"]) - 5
    shown = page.eval_on_selector_all(
        "#pipeline li.stage[data-name=TopK] li.mini-bar.kept",
        "els => els.map(e => +e.dataset.prob)",
    )
    assert sum(shown) == pytest.approx(1.0, abs=1e-5)
    page.screenshot(path=str(ARTIFACTS / "playground-pipeline.png"), full_page=True)
    assert page.problems == []


def test_forcing_a_token_changes_the_next_prompt_and_branches(browser_page, url):  # noqa: F811
    page = browser_page
    open_page(page, url, "To be")
    api = httpx.post(
        url + "/v1/lmgen/pipeline", json={"prompt": "To be", "top": 15}, timeout=30
    ).json()
    third = api["tokens"][2]
    page.locator("#chart li.bar.forceable").nth(2).click()
    assert page.input_value("#text") == "To be" + third["text"]
    expect(page.locator("#status")).to_contain_text("forced")
    # the next step asks for the forced text
    with page.expect_request("**/v1/lmgen/pipeline") as request:
        page.click("#step")
    sent = json.loads(request.value.post_data)
    assert sent["prompt"] == "To be" + third["text"] and sent["choose"] is True
    expect(page.locator("#status")).to_have_text(re.compile("^step 2"))
    # the tree: prompt -> forced -> step; back to the prompt, force another: two branches
    assert page.locator("#branches button.node").count() == 3
    page.locator("#branches button.node", has_text="prompt").click()
    assert page.input_value("#text") == "To be"
    page.wait_for_selector("#chart li.bar.forceable")
    page.locator("#chart li.bar.forceable").nth(0).click()
    first = api["tokens"][0]
    assert page.input_value("#text") == "To be" + first["text"]
    root_children = page.locator("#branches > li > ul > li > button.node")
    expect(root_children).to_have_count(2)
    root_children.nth(0).click()  # the first branch is still there
    assert page.input_value("#text") == "To be" + third["text"]
    assert page.locator("#branches button.current").count() == 1
    page.click("#undo")
    assert page.input_value("#text") == "To be"
    assert page.problems == []


def test_draw_1000_agrees_with_the_probabilities(browser_page, url):  # noqa: F811
    page = browser_page
    open_page(page, url, "The quick")
    set_value(page, "temperature", 1.5)
    set_value(page, "top_k", 8)
    set_value(page, "seed", 11)
    expect(page.locator("#pipeline li.stage")).to_have_count(3)
    page.click("#draw")
    expect(page.locator("#draws-caption")).to_contain_text("1000 draws with seed 11")
    expect(page.locator("#draws")).to_be_visible()
    rows = page.eval_on_selector_all(
        "#draws tbody tr", "els => els.map(e => [+e.dataset.prob, +e.dataset.count])"
    )
    n = sum(c for _, c in rows)
    assert n == 1000
    # chi-square over the bins expected at least 5 times, the rest pooled
    big = [(p, c) for p, c in rows if 1000 * p >= 5]
    rest = [(p, c) for p, c in rows if 1000 * p < 5]
    bins = big + ([(sum(p for p, _ in rest), sum(c for _, c in rest))] if rest else [])
    bins = [(p, c) for p, c in bins if 1000 * p >= 5] or bins
    stat = sum((c - 1000 * p) ** 2 / (1000 * p) for p, c in bins)
    assert len(bins) >= 3
    assert stat < chi2_critical(len(bins) - 1)
    page.screenshot(path=str(ARTIFACTS / "playground-draws.png"), full_page=True)
    assert page.problems == []


def test_side_by_side_same_prompt_and_seed(browser_page, url):  # noqa: F811
    page = browser_page
    open_page(page, url, "The quick")
    page.check("input[name=strategy][value=greedy]")
    page.click("#pin-a")
    page.check("input[name=strategy][value=sample]")
    set_value(page, "temperature", 1.3)
    set_value(page, "seed", 5)
    set_value(page, "max_new_tokens", 12)
    page.click("#run-compare")
    expect(page.locator("#compare-b .completion")).to_have_count(1, timeout=60_000)
    b = page.locator("#compare-b .completion").text_content()
    # each column is the same request run alone
    base = {"prompt": "The quick", "max_tokens": 64}
    want_a = httpx.post(url + "/v1/completions", json={**base, "temperature": 0}, timeout=60)
    assert (
        page.locator("#compare-a .completion").text_content() == want_a.json()["choices"][0]["text"]
    )
    want_b = httpx.post(
        url + "/v1/completions",
        json={**base, "max_tokens": 12, "temperature": 1.3, "seed": 5},
        timeout=60,
    )
    assert b == want_b.json()["choices"][0]["text"]
    assert "greedy" in page.inner_text("#compare-a .settings")
    assert "temperature=1.3" in page.inner_text("#compare-b .settings")
    # each column's pipeline strip is its first step's, as /v1/lmgen/pipeline gives it alone
    step = {"prompt": "The quick", "top": 15}
    for column, body in (
        ("#compare-a", {**step, "strategy": "greedy"}),
        ("#compare-b", {**step, "strategy": "sample", "temperature": 1.3, "seed": 5}),
    ):
        api = httpx.post(url + "/v1/lmgen/pipeline", json=body, timeout=30).json()
        stages = page.locator(f"{column} ol.strip li.stage")
        names = stages.evaluate_all("els => els.map(e => e.dataset.name)")
        assert names == [s["name"] for s in api["stages"]]
        for k, stage in enumerate(api["stages"]):
            bars = stages.nth(k).locator("li.mini-bar")
            shown = bars.evaluate_all("els => els.map(e => [+e.dataset.tokenId, +e.dataset.prob])")
            want = [
                [t["token_id"], p if kept else 0]
                for t, p, kept in zip(api["tokens"], stage["probs"], stage["kept"], strict=True)
            ]
            assert [i for i, _ in shown] == [i for i, _ in want]
            assert [p for _, p in shown] == pytest.approx([p for _, p in want], abs=1e-6)
        assert page.locator(f"{column} li.mini-bar.forceable").count() == 0
    assert page.locator("#compare-b ol.strip li.stage").count() == 2  # model, temperature
    page.screenshot(path=str(ARTIFACTS / "playground-side-by-side.png"), full_page=True)
    assert page.problems == []
