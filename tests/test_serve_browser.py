"""The story page in a real browser: Playwright driving Debian's Chromium against a live server."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import tinytales.generate as engine
from tinytales.defaults import STORY_DEFAULTS
from tinytales.serve import create_app
from tinytales.serve.background import BackgroundServer
from tinytales.serve.safety import PROMPT_REFUSED

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STORY = ("Lily ", "saw ", "a ", "big ", "red ", "kite ", "in ", "the ", "sky. ", "She ", "smiled ", "and ",
         "ran ", "after ", "it. ", "The ", "end.")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"Debian's Chromium is not at {CHROMIUM}: apt-get install -y chromium")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(tiny_model_dir):
    with BackgroundServer(create_app(tiny_model_dir, batching=False)) as server:  # the tests script stream_events
        yield server


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def scripted_engine(monkeypatch, words=STORY, delay=0.03):
    """A known story, one word every `delay` s, so that the page can be seen streaming it."""
    def stream_events(model, tokenizer, prompt, config, should_stop=None):
        def events():
            for word in words[:config.max_new_tokens]:
                time.sleep(delay)
                yield word
            yield engine.Story("".join(words), prompt, [], len(words), True, delay * len(words), 5)
        return events()

    monkeypatch.setattr(engine, "stream_events", stream_events)


def test_story_streams_in_word_by_word(server, page, monkeypatch, tmp_path):
    scripted_engine(monkeypatch)
    page.goto(server.url)
    page.fill("#prompt", "Lily went outside.")
    page.click("#tell")
    page.locator("#story .word").nth(2).wait_for()  # (not wait_for_function: the page's CSP forbids eval)
    words_early = page.locator("#story .word").count()
    assert page.is_visible("#stop") and not page.is_visible("#again")  # still telling: it streams
    page.wait_for_selector("#again", state="visible")
    assert page.locator("#story .word").count() > words_early
    assert page.inner_text("#story") == "Lily went outside." + "".join(STORY)
    assert "words" in page.inner_text("#stats") and not page.is_visible("#stop")
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_page_works_under_its_content_security_policy(server, page, monkeypatch):
    """The server sends a strict Content-Security-Policy (only its own scripts and styles, data: images
    for the favicon); the page must not need anything it blocks."""
    scripted_engine(monkeypatch)
    console = []
    page.on("console", lambda message: console.append(message.text))
    page.add_init_script("window.violations = []; document.addEventListener('securitypolicyviolation', "
                         "e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));")
    response = page.goto(server.url)
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector(".idea")  # app.js ran and fetched /api/info
    page.fill("#prompt", "Lily went outside.")
    page.click("#tell")
    page.wait_for_selector("#again", state="visible")
    assert page.inner_text("#story") == "Lily went outside." + "".join(STORY)
    assert page.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"  # style.css applied
    assert page.evaluate("window.violations") == []
    assert not [text for text in console if "Content Security Policy" in text]


def test_real_model_story_and_another_one(server, page):
    page.goto(server.url)
    page.click(".idea >> nth=0")  # an example prompt fills the box
    prompt = page.input_value("#prompt")
    assert prompt and prompt != "Once upon a time, there was a little dragon who was afraid of the dark."
    page.click("input[name=length][value='100'] + span")
    page.click("#tell")
    page.wait_for_selector("#again", state="visible")
    first = page.inner_text("#story")
    assert first.startswith(prompt)
    page.click("#again")
    page.wait_for_selector("#again", state="visible")
    assert page.inner_text("#story").startswith(prompt)


def test_story_ingredients_go_with_the_request(server, page, monkeypatch):
    asked = []
    scripted_engine(monkeypatch)
    scripted = engine.stream_events

    def recording(model, tokenizer, prompt, config, should_stop=None):
        asked.append((prompt, config.words, config.features, config.top_k))
        return scripted(model, tokenizer, prompt, config, should_stop)

    monkeypatch.setattr(engine, "stream_events", recording)
    page.goto(server.url)
    page.wait_for_selector(".idea")
    assert page.is_visible("#ingredients-hint")  # the tiny model did not learn ingredients: the page says so
    page.fill("#prompt", "")
    page.fill("#words", "dog, cake rainy")
    page.click("input[name=feature][value='Dialogue'] + span")
    page.click("input[name=feature][value='HappyEnding'] + span")
    page.click("input[name=feature][value='SadEnding'] + span")  # one ending at a time: happy is unticked
    assert not page.is_checked("input[name=feature][value='HappyEnding']")
    page.click("#tell")
    page.wait_for_selector("#again", state="visible")
    # the grown-up settings start from the server's story defaults (top_k 0, as on the command line)
    assert asked == [("", ("dog", "cake", "rainy"), ("Dialogue", "SadEnding"), STORY_DEFAULTS["top_k"])]
    assert page.inner_text("#story") == "".join(STORY)
    page.fill("#words", "a, b, c, d, e, f")
    page.click("#tell")
    page.wait_for_selector("#notice", state="visible")
    assert "at most 5" in page.inner_text("#notice") and len(asked) == 1


def test_stop_button_stops_the_story_on_the_server(server, page, monkeypatch):
    scripted_engine(monkeypatch, words=("on ",) * 1000, delay=0.01)
    history = server.app.state.runner.history
    page.goto(server.url)
    page.click("#tell")
    page.locator("#story .word").nth(4).wait_for()
    page.click("#stop")
    page.wait_for_selector("#again", state="visible")
    assert "stopped" in page.inner_text("#stats")
    deadline = time.monotonic() + 5
    while not history and time.monotonic() < deadline:
        time.sleep(0.02)
    assert history and history[-1].finish_reason == "cancelled" and history[-1].pieces < 500


def test_unsuitable_prompt_gets_a_kind_answer(server, page):
    page.goto(server.url)
    page.fill("#prompt", "The robot wanted to kill the king.")
    page.click("#tell")
    page.wait_for_selector("#notice", state="visible")
    assert page.inner_text("#notice") == PROMPT_REFUSED
    assert not page.is_visible("#story-card")


def test_page_fits_a_phone(server, browser):
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector(".idea")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
    font_px = page.evaluate("parseFloat(getComputedStyle(document.querySelector('#prompt')).fontSize)")
    assert font_px >= 16  # large type (and no zoom-on-focus on phones)
    context.close()
