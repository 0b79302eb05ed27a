"""The playground page in a real browser: Debian's Chromium, headless, driven by Playwright for
Python against a real server on 127.0.0.1. Never downloads a browser.

Run with `make test-browser` (installs chromium with apt when missing) or
`pytest -m browser`. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.server import create_app, serve_in_thread

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TEXTS = [
    "To be, or not to be: that is the question.",
    "The quick brown fox jumps over the lazy dog; the lazy dog does not mind.",
] * 12


KEY = "sk-browser-test"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_peaky_model(tmp_path_factory.mktemp("browser") / "tiny", TEXTS)


@pytest.fixture(scope="module")
def base_url(model_dir):
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)})) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url(model_dir):
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)}, api_key=KEY)) as url:
        yield url


@pytest.fixture
def browser_page(tmp_path):
    if CHROMIUM is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install -y chromium; "
            "`make test-browser` does it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(15_000)
        page.problems = []  # console errors, page errors, requests that leave the server
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on(
            "request",
            lambda r: (
                r.url.startswith(("http://127.0.0.1:", "data:"))
                or page.problems.append("outside request: " + r.url)
            ),
        )
        yield page
        context.close()


def expect(locator):
    from playwright.sync_api import expect

    return expect(locator)


def _bars(page) -> list[str]:
    return page.eval_on_selector_all(
        "#chart li", "els => els.map(e => e.className + '|' + e.textContent)"
    )


def test_playground_step_slider_generate_beam(browser_page, base_url):
    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(base_url + "/")
    page.wait_for_selector("#chart li.bar")
    assert page.locator("#model option").all_inner_texts() == ["tiny"]

    # type a prompt: the chart follows the text
    page.fill("#text", "To be, or not")
    expect(page.locator("#dist-caption")).to_contain_text("To be, or not")
    before = _bars(page)
    assert page.locator("#chart li.bar.removed").count() == 0  # no filter yet

    # raise top-k with the keyboard: 0 -> 3
    page.focus("#top_k")
    for _ in range(3):
        page.keyboard.press("ArrowUp")
    assert page.inner_text("#top_k-out") == "3"
    page.wait_for_selector("#chart li.cutoff")
    assert page.locator("#chart li.bar.kept").count() == 3
    assert page.locator("#chart li.bar.removed").count() >= 3
    assert "top-k" in page.inner_text("#chart li.cutoff")
    assert "TopK" in page.inner_text("#chain")
    after_slider = _bars(page)
    assert after_slider != before

    # step: one token appended, the chosen (kept) bar highlighted
    text0 = page.input_value("#text")
    page.click("#step")
    page.wait_for_selector("#chart li.chosen")
    expect(page.locator("#status")).to_have_text(re.compile("^step 1"))
    text1 = page.input_value("#text")
    assert text1 != text0 and text1.startswith(text0)
    chosen = page.locator("#chart li.chosen")
    assert chosen.count() == 1 and "kept" in chosen.get_attribute("class")
    assert _bars(page) != after_slider
    page.screenshot(path=str(ARTIFACTS / "playground-step.png"), full_page=True)

    # keyboard: Ctrl+Enter in the text box steps again; Undo goes back
    page.focus("#text")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#status")).to_have_text(re.compile("^step 2"))
    assert len(page.input_value("#text")) >= len(text1)
    page.click("#undo")
    assert page.input_value("#text") == text1

    # generate streams a continuation
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(re.compile("^done"), timeout=60_000)
    assert len(page.input_value("#text")) > len(text1)

    # beam search draws its tree
    page.check("input[name=strategy][value=beam]")
    assert page.is_disabled("#step") and page.is_disabled("#top_k")
    page.click("#generate")
    page.wait_for_selector("#tree g.kept")
    assert page.locator("#tree g.path").count() >= 2
    assert page.locator("#beam-results li").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "playground-beam.png"), full_page=True)

    # phone width: one column, nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    page.check("input[name=strategy][value=sample]")
    page.wait_for_timeout(500)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)
    assert page.problems == []


def test_playground_asks_for_the_api_key(browser_page, keyed_url):
    page = browser_page
    page.goto(keyed_url + "/")
    expect(page.locator("#status")).to_contain_text("API key")
    assert page.locator("#connection").get_attribute("open") is not None
    page.problems.clear()  # the 401s were expected
    page.fill("#apikey", KEY)
    page.press("#apikey", "Tab")  # change event: reload with the key
    page.wait_for_selector("#chart li.bar")
    page.focus("#step")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile("^step 1"))
    page.problems = [p for p in page.problems if "401" not in p]
    assert page.problems == []


def _open_groups(page) -> None:
    """Every group of settings unfolded, so that its controls can be filled."""
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")


def test_an_actions_error_stays_after_the_chart_refreshes(browser_page, base_url):
    """Generate's 400 (max_new_tokens 0) stays on the page: the chart's refresh afterwards
    clears only its own errors (it used to wipe any within half a second)."""
    page = browser_page
    page.goto(base_url + "/")
    page.wait_for_selector("#chart li.bar")
    _open_groups(page)
    page.fill("#max_new_tokens", "0")
    page.press("#max_new_tokens", "Tab")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("max_tokens", timeout=30_000)
    page.wait_for_timeout(1500)  # the chart has refreshed since
    expect(page.locator("#status")).to_contain_text("max_tokens")
    assert "error" in page.get_attribute("#status", "class")
    page.problems = [p for p in page.problems if "400" not in p]
    assert page.problems == []


def test_the_text_box_grows_and_follows_a_streamed_continuation(browser_page, base_url):
    page = browser_page
    page.goto(base_url + "/")
    page.wait_for_selector("#chart li.bar")
    height = page.evaluate("document.querySelector('#text').clientHeight")
    page.fill("#text", "To be\n" * 9)  # more lines than its rows; well inside the context
    grown = page.evaluate("document.querySelector('#text').clientHeight")
    assert grown > height  # typed text: the box grows to it
    _open_groups(page)
    page.fill("#max_new_tokens", "30")
    page.press("#max_new_tokens", "Tab")
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(re.compile("^done"), timeout=60_000)
    box = page.evaluate(
        "(() => { const t = document.querySelector('#text');"
        " return [t.scrollTop + t.clientHeight, t.scrollHeight]; })()"
    )
    assert box[0] >= box[1] - 2  # scrolled to the end, where the new tokens are
    label = page.inner_text("button.node.generated")  # the branch: the text's start only
    assert 1 <= len(label) <= 24
    assert page.problems == []


def test_the_sampler_order_takes_lines_or_semicolons(browser_page, base_url):
    page = browser_page
    page.goto(base_url + "/")
    page.wait_for_selector("#chart li.bar")
    for text in ("top_k\ntemperature", "top_k;temperature"):
        _open_groups(page)
        page.fill("#samplers", text)
        page.press("#samplers", "Tab")
        page.click("#step")
        expect(page.locator("#status")).to_have_text(re.compile("^step"), timeout=30_000)
        page.click("#undo")
    assert page.problems == []


def test_contrastive_search_runs_from_the_pages_defaults(browser_page, base_url):
    """top_k is off (0) by default, and contrastive search needs candidates: the page sends
    its own k (shown beside the control) where top_k is left off."""
    page = browser_page
    page.goto(base_url + "/")
    page.wait_for_selector("#chart li.bar")
    page.check("input[name=strategy][value=contrastive]")
    _open_groups(page)
    expect(page.locator("#top_k-out")).to_have_text("4 (contrastive)")
    page.fill("#max_new_tokens", "8")
    page.press("#max_new_tokens", "Tab")
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(re.compile("^done"), timeout=60_000)
    assert page.problems == []
