"""The app page in a real browser: headless Chromium (Debian's `chromium`, never one Playwright
downloads) driven by Playwright, against a server holding stand-in apps (tests/fake_app.py) that
reply with known words, paced so the stream is seen arriving. The form is filled and sent and
the text must grow over several DOM updates; the chat view is driven for two turns at phone
width. Screenshots are kept under the test's tmp folder.

Without chromium or playwright these tests skip, saying so; with LLMOS_REQUIRE_BROWSER=1 (set by
.ci/run) they fail instead, so CI cannot pass without running them."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, prometheus-client) is in the test extra")

from fake_app import FakeApp  # noqa: E402
from serve_server import running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 20_000


def _unavailable(reason: str):
    if os.environ.get("LLMOS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; LLMOS_REQUIRE_BROWSER=1 says the browser tests must run here")
    pytest.skip(f"BROWSER TESTS NOT RUN: {reason} (install Debian's chromium and the playwright package)")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no chromium at {CHROMIUM}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def apps():
    return {"writer": FakeApp(delay=0.12),
            "bot": FakeApp(name="bot", kind="chat", description="Chats about Acme", delay=0.08,
                           specs=[FakeApp().specs[1]])}


@pytest.fixture(scope="module")
def server(apps):
    with running_server(apps=list(apps.values())) as (base, _):
        yield base


# Records the output's text length at every DOM change, from before the request is sent.
WATCH = """(sel) => {
  window.__lengths = [];
  const node = document.querySelector(sel);
  new MutationObserver(() => window.__lengths.push(node.textContent.length))
    .observe(node, {childList: true, characterData: true, subtree: true});
}"""


def test_the_form_streams_the_reply_with_citations_and_explain(browser, server, apps, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 1100})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server + "/apps/writer")
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert page.title() == "writer · llmos"
    # Every field is reached by its label: generated from the inputs, typed by kind.
    page.get_by_label("Topic").fill("ships")
    assert page.get_by_label("Topic").evaluate("n => n.tagName") == "TEXTAREA"
    page.get_by_label("Tone").select_option("formal")
    page.get_by_label("Words").fill("12")
    assert page.get_by_label("Words").get_attribute("type") == "number"
    assert page.get_by_label("Shout").get_attribute("type") == "checkbox"
    page.get_by_role("checkbox", name="Explain").check()
    page.evaluate(WATCH, "#output")
    page.get_by_role("button", name="Run").click()
    want = " ".join(f"formal-{i}" for i in range(12))
    page.wait_for_function("(w) => document.querySelector('#output').textContent === w", arg=want, timeout=WAIT_MS)
    lengths = page.evaluate("window.__lengths")
    growing = [n for n in lengths if n > 0]
    assert len(set(growing)) >= 6, f"the text should arrive piece by piece; lengths seen: {lengths}"
    assert growing == sorted(growing) and growing[0] < len(want), lengths
    call = apps["writer"].calls[-1]
    assert (call["topic"], call["tone"], call["words"], call["shout"], call["explain"]) == ("ships", "formal", 12,
                                                                                          False, True)
    page.wait_for_selector("#explain-view:not([hidden])", timeout=WAIT_MS)
    assert "docs/faq.md" in page.inner_text("#sources") and "Acme ships worldwide." in page.inner_text("#sources")
    assert page.locator("#tokens .tok").count() == 12 and "Write about ships" in page.inner_text("#prompt")
    assert "tokens/s" in page.inner_text("#timings")
    page.screenshot(path=str(tmp_path / "app-page.png"), full_page=True)
    assert (tmp_path / "app-page.png").stat().st_size > 10_000
    assert not errors, errors
    # A bad value comes back as the server's error, naming and marking the field.
    page.get_by_label("Words").fill("400")
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#status.error", timeout=WAIT_MS)
    assert "words" in page.inner_text("#status")
    assert page.get_by_label("Words").get_attribute("aria-invalid") == "true"


def test_the_chat_view_keeps_the_conversation_for_two_turns_at_phone_width(browser, server, apps, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 800})
    page.goto(server + "/apps/bot")
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert page.inner_text("#description") == "Chats about Acme"
    box = page.get_by_label("Message")
    box.fill("hello there")
    box.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant .body')[0]?.textContent"
                           " === 'turn-1 you said hello there'", timeout=WAIT_MS)
    page.wait_for_selector("#send:not([disabled])", timeout=WAIT_MS)
    page.evaluate(WATCH, "#messages")
    box.fill("and the ships?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant .body')[1]?.textContent"
                           " === 'turn-2 you said and the ships?'", timeout=WAIT_MS)
    assert len(set(page.evaluate("window.__lengths"))) >= 4, "the second reply should stream too"
    assert page.locator(".msg.user").all_inner_texts() == ["You\nhello there", "You\nand the ships?"]
    assert apps["bot"].calls[-1]["history"] == [{"role": "user", "content": "hello there"},
                                                {"role": "assistant", "content": "turn-1 you said hello there"}]
    assert apps["bot"].calls[-1]["tone"] == "friendly"  # the settings' default, sent with each message
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scroll on a phone"
    page.screenshot(path=str(tmp_path / "chat-page.png"), full_page=True)
    page.get_by_role("button", name="New conversation").click()
    assert page.locator(".msg").count() == 0


def test_the_support_bot_template_answers_in_the_page_with_its_sources(browser, tmp_path):
    """The real thing: `llmos new support-bot`'s app on the bundled model's weights, in the page."""
    pytest.importorskip("bm25s", reason="the 'apps' extra (bm25s) is not installed")
    from long_context import long_context_model, use_model

    from llmos.apps.templates import new_app

    model = long_context_model(tmp_path / "model")
    path = new_app("support-bot", "support-bot", tmp_path / "apps")
    use_model(path, model)
    with running_server(models=[model], apps=[str(path)]) as (base, _):
        page = browser.new_page(viewport={"width": 720, "height": 900})
        page.goto(base + "/apps/support-bot")
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        assert page.get_by_label("Company").input_value() == "Acme"  # the settings, from the app's inputs
        page.get_by_label("Message").fill("How do I get a refund for my order?")
        page.get_by_role("button", name="Send").click()
        page.wait_for_selector("#sources:not([hidden])", timeout=WAIT_MS)
        page.wait_for_selector("#send:not([disabled])", timeout=60_000)
        assert page.locator("#status.error").count() == 0, page.inner_text("#status")
        assert page.inner_text(".msg.assistant .body").strip()
        assert "support-bot_docs/refunds.md" in page.inner_text("#citations")
        page.screenshot(path=str(tmp_path / "support-bot.png"), full_page=True)
