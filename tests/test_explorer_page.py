"""The explorer's page in a real headless Chromium (Debian's), as a student meets it: every
error shown where they are looking, results marked when they no longer match the inputs, text
outside the Basic Multilingual Plane selected exactly, a zero-duration token still clickable,
a running sweep cancelled. A tiny random model with a trained byte-level tokenizer stands in for
the default model (the page's behaviour does not depend on it), so these run in the quick tier;
the default model's page (the paper's effect, timings, the screenshot) is in test_explorer.py."""

import json
import threading
import time

import pytest

from conftest import tiny_explorer_model
from demos import explore
from page_driver import SETTLED, click_chip, open_page, slide, wait
from tokenizer import Tokenizer

POINT_SECONDS = 0.05  # each sweep point is slowed to this, one point a batch, so that a sweep can be caught running


class SlowSweeps(explore.Explorer):
    """The real explorer, its sweeps one point a batch and POINT_SECONDS a point; counts the points."""

    def __init__(self, *args):
        super().__init__(*args)
        self.batch_size, self.points = 1, 0

    def sweep(self, plan, progress):
        def slowed(done, total):
            time.sleep(POINT_SECONDS)
            self.points += 1
            progress(done, total)

        return super().sweep(plan, slowed)


@pytest.fixture(scope="module")
def page(trained_bpe_json, browser):
    """(explorer, tokenizer, browser at the page's URL)."""
    tokenizer = Tokenizer.from_file(trained_bpe_json)
    explorer = SlowSweeps(tiny_explorer_model(tokenizer, 0.3), tokenizer, "tiny")
    httpd = explore.serve(explorer, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield explorer, tokenizer, browser, url
    httpd.shutdown()
    httpd.server_close()


def fresh(page):
    explorer, tokenizer, browser, url = page
    open_page(browser, url)
    return explorer, tokenizer, browser


def type_prompt(browser, prompt):
    """Replace the prompt as typing does, and wait until the page shows the new prompt's answer."""
    browser.execute_script("const p = document.getElementById('prompt'); p.value = arguments[0]; p.dispatchEvent(new Event('input'))", prompt)
    wait(browser, "return window.explorer.state.prompt === arguments[0] || document.getElementById('banner-text').textContent", prompt)
    wait(browser, SETTLED)


def banner_in_view(browser) -> str:
    """The error banner's text, asserting that it is visible in the viewport wherever the page is scrolled."""
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    seen = browser.execute_script("""const b = document.getElementById('banner'), r = b.getBoundingClientRect();
        return [getComputedStyle(b).display !== 'none' && r.height > 0 && r.top >= 0 && r.bottom <= innerHeight, b.innerText]""")
    assert seen[0], f"the error banner is not in view: {seen}"
    return seen[1]


def click(browser, element_id):
    from selenium.webdriver.common.by import By

    browser.execute_script("document.getElementById(arguments[0]).scrollIntoView({block: 'center'})", element_id)
    browser.find_element(By.ID, element_id).click()


def test_every_error_is_shown_where_the_student_is_looking(page):
    explorer, tokenizer, browser = fresh(page)
    assert browser.execute_script("return document.getElementById('banner').classList.contains('hidden')")
    slide(browser, "duration", 0.5)  # nothing selected
    assert "select one or more tokens first: click a token" in banner_in_view(browser)
    click(browser, "sweep-button")  # nothing selected
    assert "select the tokens to sweep first" in banner_in_view(browser)
    type_prompt(browser, "")
    assert "prompt must be a text of 1 to 4000 characters" in banner_in_view(browser)
    long = "apple " * 600
    type_prompt(browser, long)
    n = len(tokenizer.encode(long))
    assert f"the prompt has {n} tokens; the explorer takes at most 512" in banner_in_view(browser)
    assert "could not be read" in browser.execute_script("return document.getElementById('results-stale').textContent")
    type_prompt(browser, "Is an apple red?")
    assert browser.execute_script("return document.getElementById('banner').classList.contains('hidden')")  # fixed: gone
    click(browser, "mode-interp")
    slide(browser, "alpha", 0.5)  # no word selected
    assert "select the word to interpolate first" in banner_in_view(browser)
    click(browser, "sweep-button")
    assert "select the word to interpolate first" in banner_in_view(browser)


def test_a_new_prompt_resets_what_belonged_to_the_old_one(page):
    explorer, tokenizer, browser = fresh(page)
    click_chip(browser, 3)
    slide(browser, "duration", 2.5)
    browser.execute_script("document.getElementById('points').value = 5")
    click(browser, "sweep-button")
    wait(browser, "return window.explorer.stats.sweeps === 1")
    assert browser.execute_script("return document.querySelectorAll('#sweep polyline').length") == 10  # the digits
    browser.execute_script("const a = document.getElementById('answers'); a.value = '1, 2'; a.dispatchEvent(new Event('input'))")
    assert browser.execute_script("return document.getElementById('sweep-panel').classList.contains('stale')")  # other answers now
    wait(browser, SETTLED)
    browser.execute_script("const p = document.getElementById('prompt'); p.value = 'The sky is'; p.dispatchEvent(new Event('input'))")
    assert browser.execute_script("return document.getElementById('results').classList.contains('stale')")  # at once
    wait(browser, "return window.explorer.state.prompt === 'The sky is'")
    wait(browser, SETTLED)
    state = browser.execute_script("""const s = window.explorer.state; return {selected: s.selected.size, durations: s.durations,
        slider: document.getElementById('duration-value').textContent, lines: document.querySelectorAll('#sweep polyline').length,
        answers: document.getElementById('answers').value, note: document.getElementById('answers-note').textContent,
        stale: document.getElementById('results').classList.contains('stale'), top: s.last.top.map(t => t[0])}""")
    assert state["selected"] == 0 and set(state["durations"]) == {1} and state["slider"] == "1.00" and state["lines"] == 0
    proposed = [a.strip() for a in state["answers"].split(",")]
    assert proposed == explore._proposals(state["top"]) and "proposed from the model's top tokens" in state["note"]
    assert not state["stale"]


EMOJI = "I ate 🍎🍎🍎🍎 today"
CJK = "我吃了四个苹果。"
COMBINING = "The cafe\u0301 serves cre\u0300me bru\u0302le\u0301e."


@pytest.mark.parametrize("prompt, text", [(EMOJI, "🍎🍎"), (CJK, "苹果"), (COMBINING, "cre\u0300me")])
@pytest.mark.parametrize("mode", ["durations", "interpolation"])
def test_text_beyond_ascii_selects_exactly_the_highlighted_tokens(page, prompt, text, mode):
    """The page highlights UTF-16 ranges; the server counts code points. Selected: exactly the
    tokens whose characters overlap the highlighted ones; interpolated: exactly their text."""
    explorer, tokenizer, browser = fresh(page)
    if mode == "interpolation":
        click(browser, "mode-interp")
    type_prompt(browser, prompt)
    at = prompt.index(text, 1 if text == "🍎🍎" else 0)  # the second and third apples
    start16 = len(prompt[:at].encode("utf-16-le")) // 2
    end16 = start16 + len(text.encode("utf-16-le")) // 2
    browser.execute_script("document.getElementById('prompt').setSelectionRange(arguments[0], arguments[1])", start16, end16)
    click(browser, "select-text")
    wait(browser, SETTLED)
    ids, offsets = tokenizer.encode_with_offsets(prompt)
    expected = [i for i, (a, b) in enumerate(offsets) if a < at + len(text) and b > at]
    assert browser.execute_script("return [...window.explorer.state.selected].sort((a, b) => a - b)") == expected
    if mode == "interpolation":
        word = prompt[offsets[expected[0]][0] : offsets[expected[-1]][1]].lstrip()
        assert browser.find_element("id", "word").text == json.dumps(word, ensure_ascii=False)
        labels = browser.execute_script("return window.explorer.state.last.labels")
        assert f"{word} → bananas" in labels, labels  # the server swapped the word the page shows
    else:
        slide(browser, "duration", 0.5)
        durations = browser.execute_script("return window.explorer.state.last.durations")
        assert [i for i, d in enumerate(durations) if d == 0.5] == expected


def test_a_zero_duration_token_stays_clickable(page):
    explorer, tokenizer, browser = fresh(page)
    click_chip(browser, 4)
    slide(browser, "duration", 0)
    click_chip(browser, 6)
    assert browser.execute_script("return [...window.explorer.state.selected]") == [6]
    click_chip(browser, 4)  # a real click on the chip of a token that lasts no time
    assert browser.execute_script("return [...window.explorer.state.selected]") == [4]
    assert browser.find_element("id", "duration-value").text == "0.00"


def test_cancel_stops_a_running_sweep(page):
    explorer, tokenizer, browser = fresh(page)
    click_chip(browser, 3)
    browser.execute_script("document.getElementById('points').value = 200")  # 10 s of sweep
    click(browser, "sweep-button")
    wait(browser, "return document.getElementById('progress').value > 0.05", timeout=10)
    click(browser, "cancel-button")
    wait(browser, "return window.explorer.stats.cancelled === 1", timeout=5)
    stopped = explorer.points
    time.sleep(10 * POINT_SECONDS)
    assert explorer.points <= stopped + 2 < 150  # the server stopped at its next batch
    assert browser.find_element("id", "sweep-status").text == "cancelled"
    slide(browser, "duration", 0.7)  # the model is free again
    assert browser.execute_script("return window.explorer.state.last.durations[3]") == pytest.approx(0.7)


def test_the_sweep_chart_names_what_it_shows(page):
    explorer, tokenizer, browser = fresh(page)
    click_chip(browser, 3)
    click_chip(browser, 5, shift=True)
    browser.execute_script("document.getElementById('points').value = 6")
    click(browser, "sweep-button")
    wait(browser, "return window.explorer.stats.sweeps === 1")
    chart = browser.execute_script("""const s = document.getElementById('sweep');
        return {titles: [...s.querySelectorAll('.title')].map(t => t.textContent), swatches: s.querySelectorAll('.swatch line').length,
                styles: [...s.querySelectorAll('polyline')].map(p => p.getAttribute('stroke') + '/' + p.getAttribute('stroke-dasharray')),
                caption: document.getElementById('sweep-caption').textContent}""")
    assert chart["titles"] == ["duration d of the selected tokens", "probability of the next token"]
    assert chart["swatches"] == 10 and len(set(chart["styles"])) == 10  # no two curves look alike
    assert "tokens 3–5" in chart["caption"] and "6 points from 0.1 to 1" in chart["caption"]
    assert json.dumps(explore.APPLES_PROMPT[:90])[:-1] in chart["caption"]
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(browser.find_element("id", "sweep-hit")).perform()
    assert browser.find_element("id", "sweep-readout").text.startswith("d = ")


def test_copy_says_whether_it_copied(page):
    explorer, tokenizer, browser = fresh(page)
    click(browser, "copy")
    wait(browser, "return document.getElementById('copy-status').textContent !== ''", timeout=5)
    assert browser.find_element("id", "copy-status").text in ("copied ✓", "could not copy here: the code is selected, press Ctrl-C (⌘-C)")


def test_the_attention_chart_labels_its_tokens_and_shows_the_change(page):
    explorer, tokenizer, browser = fresh(page)
    click_chip(browser, 2)
    click_chip(browser, 4, shift=True)
    slide(browser, "duration", 0.4)
    chart = """const s = document.getElementById('attention');
        return {labels: [...s.querySelectorAll('.label')].map(t => t.textContent), html: s.innerHTML,
                filled: [...s.querySelectorAll('rect:not([stroke])')].map(r => +r.getAttribute('x')),
                dashed: [...s.querySelectorAll('rect[stroke]')].map(r => +r.getAttribute('x'))}"""
    n = len(browser.execute_script("return window.explorer.state.tokens"))
    seen = browser.execute_script(chart)  # default view: now minus before, every token labelled
    assert len(seen["labels"]) == n and "NaN" not in seen["html"] and len(seen["filled"]) == n
    last = browser.execute_script("return window.explorer.state.last")
    change = [a - b for a, b in zip(last["attention"]["after"], last["attention"]["before"], strict=True)]
    assert max(abs(c) for c in change) > 0
    browser.execute_script(
        "document.getElementById('attention-view').value = 'weights'; document.getElementById('attention-view').dispatchEvent(new Event('change'))"
    )
    seen = browser.execute_script(chart)
    assert len(seen["dashed"]) == len(seen["filled"]) == n and "NaN" not in seen["html"]
    assert seen["dashed"][:2] == seen["filled"][:2] and seen["dashed"][-1] > seen["filled"][-1]  # before: the unshrunk timeline
    browser.execute_script("document.getElementById('zoom').click()")
    seen = browser.execute_script(chart)
    assert len(seen["filled"]) == 5 and len(seen["labels"]) == 5  # tokens 2-4 and a neighbour each side


def test_a_page_of_another_origin_cannot_frame_the_explorer(page, monkeypatch):
    """A page on another port of 127.0.0.1 (another origin) puts the explorer in an iframe, as a
    clickjacking page would: Chromium refuses to show it (X-Frame-Options DENY, CSP frame-ancestors
    'none'), so none of the explorer's script runs and nothing is asked of the model."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    explorer, _, browser, url = page
    asked = []
    for name in ("info", "tokenize", "predict"):
        original = getattr(explorer, name)
        monkeypatch.setattr(explorer, name, lambda *args, name=name, original=original: asked.append(name) or original(*args))

    class Framing(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f'<!doctype html><title>elsewhere</title><iframe id="f" src="{url}/" width="800" height="600"></iframe>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Framing)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{elsewhere.server_address[1]}/")
        wait(browser, "return document.title === 'elsewhere' && document.readyState === 'complete'")
        time.sleep(3)  # what a framed explorer would ask at once (/api/info, then a prediction), it would have asked by now
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
    assert asked == []
    open_page(browser, url)  # the explorer itself, opened directly, still works
    assert "info" in asked
