"""The playground's chat mode in headless Chromium (as test_playground_browser.py): a
conversation with a ChatML model, the rendered prompt with its special tokens marked, a reply
equal to the API's, and the distribution behind a reply token."""

from __future__ import annotations

import httpx
import pytest
from tests.chat_model import save_chat_model
from tests.test_playground_browser import ARTIFACTS, browser_page, expect  # noqa: F401

import lmgen
from lmgen.server import create_app, serve_in_thread
from lmgen.settings import BY_NAME

pytestmark = pytest.mark.browser
QUESTION = "What is the capital of France?"
MAX_TOKENS = BY_NAME["max_new_tokens"].default  # the page starts at the declared default


@pytest.fixture(scope="module")
def chat_url(tmp_path_factory):
    model_dir = save_chat_model(tmp_path_factory.mktemp("browser-chat") / "chatml")
    with serve_in_thread(create_app({"chat": lmgen.load(model_dir)})) as url:
        yield url


def test_playground_chat_mode(browser_page, chat_url):  # noqa: F811
    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(chat_url + "/")
    page.wait_for_selector("#chart li.bar")
    page.check("input[name=mode][value=chat]")
    expect(page.locator("#chat-mode")).to_be_visible()
    expect(page.locator("#text-mode")).to_be_hidden()
    page.check("input[name=strategy][value=greedy]")
    page.fill("#system", "Be brief.")
    page.fill("#message", QUESTION)
    page.click("#send")
    expect(page.locator("#conversation li.assistant")).to_have_count(1, timeout=60_000)
    expect(page.locator("#status")).to_contain_text("reply of")

    # the reply is the API's for the same conversation and settings
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    api = httpx.post(
        chat_url + "/v1/chat/completions",
        json={"messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS},
        timeout=60,
    ).json()
    reply = api["choices"][0]["message"]["content"]
    shown = page.eval_on_selector_all(
        "#conversation li.assistant button.tok", "els => els.map(e => e.dataset.text).join('')"
    )
    assert shown == reply

    # the rendered prompt, special tokens marked: both turns and the generation prompt
    specials = page.locator("#prompt-tokens span.special").all_inner_texts()
    assert specials.count("<|im_start|>") == 4 and specials.count("<|im_end|>") == 3
    expect(page.locator("#prompt-caption")).to_contain_text("chat template of")

    # a reply token: the distribution it came from, the token marked as chosen
    page.click("#conversation li.assistant button.tok >> nth=0")
    expect(page.locator("#dist-caption")).to_contain_text("Reply token 1")
    expect(page.locator("#chart li.bar.chosen")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "playground-chat.png"), full_page=True)

    page.click("#clear-chat")
    expect(page.locator("#conversation li")).to_have_count(0)
    assert page.problems == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_chat_bubbles_read_in_both_colour_schemes(browser_page, chat_url, scheme):  # noqa: F811
    """A reply's tokens are buttons: they take the page's text colour, not the buttons' white,
    and each bubble's text contrasts with its background in light and dark mode."""
    page = browser_page
    page.emulate_media(color_scheme=scheme)
    page.goto(chat_url + "/")
    page.wait_for_selector("#chart li.bar")
    page.check("input[name=mode][value=chat]")
    page.check("input[name=strategy][value=greedy]")
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    page.fill("#max_new_tokens", "4")
    page.press("#max_new_tokens", "Tab")
    page.fill("#message", QUESTION)
    page.click("#send")
    expect(page.locator("#conversation li.assistant")).to_have_count(1, timeout=60_000)
    pairs = page.evaluate(
        """() => {
        const rgb = (c) => {  // rgb(r, g, b) or, from color-mix(), color(srgb r g b) in [0, 1]
          const n = c.match(/[\\d.]+/g).slice(0, 3).map(Number);
          return c.startsWith("color(") ? n.map((v) => v * 255) : n;
        };
        const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255;
          return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
          .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
        const contrast = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
          return (x + 0.05) / (y + 0.05); };
        const out = [];
        for (const sel of ["#conversation li.user", "#conversation li.assistant button.tok"]) {
          const el = document.querySelector(sel);
          const bubble = el.closest("li");
          out.push(contrast(rgb(getComputedStyle(el).color),
                            rgb(getComputedStyle(bubble).backgroundColor)));
        }
        return out;
      }"""
    )
    assert min(pairs) >= 4.5, pairs  # WCAG AA for text
    assert page.problems == []
