"""The explorer (demos/explore.py): its HTTP API against the library, every bad input a 400 that
says why, a burst of slider events, and the page itself in a real headless Chromium."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import experiments as ex
from conftest import CACHE, ROOT, fetch_or_skip
from demos import explore
from page_driver import SETTLED, click_chip, open_page, screenshot, slide, wait
from sweep import last_logits

pytestmark = pytest.mark.slow  # the real default model, served, and a browser

APPLES = explore.APPLES_PROMPT
DIGITS = ex.DIGITS


def serving(dtype: str):
    """(model, tokenizer, base URL): the default model in dtype behind a server on a free port of 127.0.0.1."""
    from load import fetch_model, load

    os.environ["CONTGPT_CACHE"] = str(CACHE)
    fetch_or_skip(lambda: fetch_model("qwen2.5-0.5b"))
    model, tokenizer = load("qwen2.5-0.5b", dtype=dtype)
    server = explore.serve(explore.Explorer(model, tokenizer, "qwen2.5-0.5b"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield model, tokenizer, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served():
    """In float32: the API's numbers against the library's (their bfloat16 counterparts run on a
    tiny model in test_explorer_numbers.py, on every CPU)."""
    yield from serving("float32")


@pytest.fixture(scope="module")
def served_auto():
    """In the dtype a user gets (bfloat16 on a CPU with bf16 instructions): the page in a browser."""
    yield from serving("auto")


def call(url, path, body=None, raw=None, headers=None):
    """(status, parsed JSON or, for a sweep, the list of streamed messages)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    if path == "/api/sweep" and status == 200:
        return status, [json.loads(line) for line in text.splitlines()]
    return status, json.loads(text)


def apples_timeline(tokenizer, c, keep=False):
    """The apples prompt's ids, the indices of the four apples, and durations with them at c."""
    at = APPLES.index("apple")
    ids, span = ex.span_of(tokenizer, APPLES, [(at + a, at + b) for a, b in ex.word_ranges(APPLES[at : at + 23], "apple")])
    durations = torch.ones(len(ids))
    durations[span] = c
    positions = torch.arange(len(ids), dtype=torch.float32) if keep else durations.cumsum(0) - 1
    return ids, span, positions, durations


def library(model, tokenizer, answers, **inputs):
    logits = model(**inputs, last_only=True)[:, -1]
    return logits, ex.answer_probs(logits, tokenizer, answers)[0][0]


def test_info_and_tokens(served):
    model, tokenizer, url = served
    status, info = call(url, "/api/info")
    assert status == 200 and info["layers"] == model.config.n_layers and info["prompt"] == APPLES
    status, data = call(url, "/api/tokenize", {"prompt": APPLES})
    ids, offsets = tokenizer.encode_with_offsets(APPLES)
    assert status == 200 and [t["id"] for t in data["tokens"]] == ids
    assert [(t["start"], t["end"]) for t in data["tokens"]] == offsets


def test_unit_durations_are_the_ordinary_model(served):
    model, tokenizer, url = served
    status, data = call(url, "/api/predict", {"prompt": APPLES, "answers": DIGITS, "layer": 3})
    logits, expected = library(model, tokenizer, DIGITS, tokens=torch.tensor(tokenizer.encode(APPLES)))
    assert status == 200
    # float32, the page's prefix cache against one plain forward, as in the shrunk selection below:
    # 1.25e-6 measured on an avx512_bf16 CPU (below 1e-6 on AVX2 CPUs, where 1e-6 was set)
    assert [data["answers"][d] for d in DIGITS] == pytest.approx(expected.tolist(), abs=1e-5)
    top = logits[0].softmax(-1).topk(10)
    assert [p for _, p in data["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert data["top"][0][0] == tokenizer.decode([int(top.indices[0])])


@pytest.mark.parametrize("keep", [False, True])
def test_a_shrunk_selection_is_the_library_call(served, keep):
    model, tokenizer, url = served
    ids, span, positions, durations = apples_timeline(tokenizer, 0.5, keep)
    body = {"prompt": APPLES, "answers": DIGITS, "layer": 0, "durations": durations.tolist(), "keep_positions": keep}
    status, data = call(url, "/api/predict", body)
    _, expected = library(model, tokenizer, DIGITS, tokens=torch.tensor(ids), positions=positions, durations=durations)
    assert status == 200 and data["positions"] == pytest.approx(positions.tolist())
    # float32: the page's forward takes the tokens before the apples from its prefix cache (other
    # matmul shapes, other rounding): 1.4e-6 from the full forward, measured
    assert [data["answers"][d] for d in DIGITS] == pytest.approx(expected.tolist(), abs=1e-5)
    assert data["top_answer"] == DIGITS[int(expected.argmax())]
    assert "positions = torch.tensor(" in data["code"] and "durations = torch.tensor(" in data["code"]


def test_the_code_it_shows_runs_as_a_file_anywhere_and_prints_the_page_s_numbers(served, tmp_path):
    """Saved outside the project and run from there with contgpt's Python, as the page says."""
    model, tokenizer, url = served
    _, _, _, durations = apples_timeline(tokenizer, 0.7)
    status, data = call(url, "/api/predict", {"prompt": APPLES, "answers": DIGITS, "layer": 0, "durations": durations.tolist()})
    (tmp_path / "explain.py").write_text(data["code"])
    environment = {**os.environ, "CONTGPT_CACHE": str(CACHE)}
    run = subprocess.run([sys.executable, "explain.py"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    top = data["top_answer"]
    assert lines[0] == f"top answer: {top} ({100 * data['answers'][top]:.1f}%)"
    printed = {line.split()[0]: float(line.split()[1].rstrip("%")) for line in lines[1:]}
    assert printed == {d: pytest.approx(100 * data["answers"][d], abs=0.051) for d in DIGITS}  # printed to 0.1%


def test_a_sweep_is_sweep_last_logits(served):
    model, tokenizer, url = served
    ids, span, _, _ = apples_timeline(tokenizer, 1.0)
    body = {"prompt": APPLES, "answers": ["1", "2", "3", "4"], "layer": 0, "selected": span, "low": 0.1, "high": 1.0, "points": 12}
    status, messages = call(url, "/api/sweep", body)
    result = messages[-1]
    assert status == 200 and any("done" in m for m in messages[:-1]) and len(result["x"]) == 12
    cs = torch.linspace(0.1, 1.0, 12)
    positions, durations = ex.shrink(len(ids), span, cs)
    expected = ex.answer_probs(last_logits(model, torch.tensor(ids), positions=positions, durations=durations), tokenizer, ["1", "2", "3", "4"])[0]
    for k, answer in enumerate(["1", "2", "3", "4"]):
        assert result["curves"][answer] == pytest.approx(expected[:, k].tolist(), abs=1e-6)


@pytest.mark.parametrize("head", [None, 5])
def test_attention_weights_sum_to_one_and_are_the_model_s(served, head):
    model, tokenizer, url = served
    ids, _, positions, durations = apples_timeline(tokenizer, 0.4)
    assert call(url, "/api/predict", {"prompt": "Hi", "answers": DIGITS, "layer": 7})[0] == 200  # another prefix held before
    body = {"prompt": APPLES, "answers": DIGITS, "layer": 7, "head": head, "durations": durations.tolist()}
    status, data = call(url, "/api/predict", body)
    seen = []
    hook = model.model.layers[7].self_attn.probs.register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        model(torch.tensor(ids), positions=positions, durations=durations)
        model(torch.tensor(ids))  # every duration 1: "before"
    hook.remove()
    rows = [s[0, :, :, -1].reshape(model.config.n_heads, -1) for s in seen]  # (heads, keys) of the last query
    expected = [r.mean(0) if head is None else r[head] for r in rows]
    assert status == 200
    for name, reference in zip(("after", "before"), expected):
        assert sum(data["attention"][name]) == pytest.approx(1.0, abs=1e-5)
        assert data["attention"][name] == pytest.approx(reference.tolist(), abs=1e-6)


def test_interpolation_is_the_library_s_word_swap(served):
    model, tokenizer, url = served
    prompt, answers = "Question: Are apples red? (yes/no)\nAnswer:", ["yes|Yes", "no|No"]
    start = prompt.index("apples")
    spec = {"start": start, "end": start + 6, "other": "bananas", "alpha": 0.6, "method": "slerp"}
    status, data = call(url, "/api/predict", {"prompt": prompt, "answers": answers, "layer": 0, "interpolation": spec})
    swap = ex.word_swap(model, tokenizer, "Question: Are {} red? (yes/no)\nAnswer:", "apples", "bananas")
    _, expected = library(model, tokenizer, answers, embeds=swap.embeds([0.6], "slerp"), durations=swap.durations)
    assert status == 200 and [data["answers"][a] for a in answers] == pytest.approx(expected.tolist(), abs=1e-6)
    status, messages = call(url, "/api/sweep", {"prompt": prompt, "answers": answers, "layer": 0, "interpolation": spec, "points": 5})
    assert status == 200 and messages[-1]["x"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


LONG = "apple " * 600
BAD = [
    ({"prompt": APPLES, "answers": DIGITS, "layer": 0, "durations": [-1] + [1] * 28}, "durations[0] = -1 is not a number in [0, 100]"),
    ({"prompt": APPLES, "answers": DIGITS, "layer": 0, "durations": [101] + [1] * 28}, "durations[0] = 101 is not a number in [0, 100]"),
    ({"prompt": APPLES, "answers": DIGITS, "layer": 0, "durations": [1, 1]}, "durations must be a list of 29 numbers"),
    ({"prompt": APPLES, "answers": DIGITS, "layer": 0, "durations": [0] * 29}, "sees no key of positive duration"),
    ({"prompt": APPLES, "answers": DIGITS, "layer": 99}, "layer must be an integer in [0, 23], not 99"),
    ({"prompt": APPLES, "answers": DIGITS, "layer": 0, "head": 14}, "head must be an integer in [0, 13]"),
    ({"prompt": APPLES, "answers": DIGITS * 3, "layer": 0}, "answers must be a list of up to 20 texts"),
    ({"prompt": APPLES, "answers": ["zzzzqqq"], "layer": 0}, "no token of this vocabulary decodes to 'zzzzqqq'"),
    ({"prompt": LONG, "answers": DIGITS, "layer": 0}, "the prompt has 601 tokens; the explorer takes at most 512"),
    ({"prompt": "", "answers": DIGITS, "layer": 0}, "prompt must be a text of 1 to 4000 characters"),
    (
        {"prompt": APPLES, "answers": DIGITS, "layer": 0, "interpolation": {"start": 0, "end": 3, "other": "x" * 65, "alpha": 0.5}},
        "the second word must be a text of 1 to 64 characters",
    ),
    (
        {"prompt": APPLES, "answers": DIGITS, "layer": 0, "interpolation": {"start": 0, "end": 3, "other": "x", "alpha": 2}},
        "alpha must be a number in [0, 1]",
    ),
]


@pytest.mark.parametrize("body, reason", BAD)
def test_bad_input_is_a_400_with_the_reason(served, body, reason):
    _, _, url = served
    status, data = call(url, "/api/predict", body)
    assert status == 400 and reason in data["error"], data
    assert call(url, "/api/predict", {"prompt": "Hi", "answers": DIGITS, "layer": 0})[0] == 200  # still serving


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"prompt": "Hi", "answers": ["1"], "layer": 0, "durations": [NaN]}', "NaN is not a number the explorer takes"),
        (b'{"prompt": "Hi", "answers": ["1"], "layer": 0, "durations": [1e999]}', "is not a number in [0, 100]"),
        (b'{"prompt": "Hi", "answers": [', "the request is not valid JSON"),
        (b"[1, 2, 3]", "the request must be a JSON object"),
        (b"x" * (64 * 1024 + 1), "a request body must be 1 to 65536 bytes"),
    ],
)
def test_malformed_requests_are_400s(served, raw, reason):
    _, _, url = served
    status, data = call(url, "/api/predict", raw=raw)
    assert status == 400 and reason in data["error"], data
    assert call(url, "/api/info")[0] == 200


def test_bad_sweeps_are_400s_before_any_stream(served):
    _, tokenizer, url = served
    base = {"prompt": APPLES, "answers": DIGITS, "layer": 0, "low": 0.1, "high": 1.0, "points": 5}
    for extra, reason in (
        ({"selected": [3, 29]}, "selected token index 29 is not a token of the prompt (0 to 28)"),
        ({"selected": []}, "select the tokens whose duration the sweep changes"),
        ({"selected": [3], "points": 1000}, "points must be an integer in [2, 200]"),
        ({"selected": [3], "high": 1e6}, "high must be a number in [0, 100]"),
    ):
        status, data = call(url, "/api/sweep", {**base, **extra})
        assert status == 400 and reason in data["error"], data


def test_nothing_but_the_page_and_the_api_is_served(served):
    _, _, url = served
    for path in ("/../../etc/passwd", "/explore.py", "/api/load?model=x"):
        status, data = call(url, path)
        assert status == 404 and "no page" in data["error"]
    assert call(url, "/api/load", {"model": "qwen2.5-1.5b"})[0] == 404


def test_a_burst_of_slider_events_is_absorbed(served):
    """120 requests from 8 threads as fast as they come: each is answered (computed or
    superseded), the last one is computed, and the server answers /api/info meanwhile."""
    model, tokenizer, url = served
    ids, span, _, _ = apples_timeline(tokenizer, 1.0)

    def slide(k):
        durations = [1.0] * len(ids)
        for i in span:
            durations[i] = 0.1 + 0.9 * k / 119
        return call(url, "/api/predict", {"client": "burst", "prompt": APPLES, "answers": DIGITS, "layer": 0, "durations": durations})

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(slide, range(119)))
        quick = time.perf_counter()
        assert call(url, "/api/info")[0] == 200
        info_seconds = time.perf_counter() - quick
    last = slide(119)
    elapsed = time.perf_counter() - started
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0
    superseded = sum(1 for s, d in answers if s == 200 and d.get("superseded"))
    assert superseded > 0 and last[0] == 200 and not last[1].get("superseded")
    assert info_seconds < 5 and elapsed < 120, (info_seconds, elapsed)


def test_the_command_binds_to_loopback_and_warns_for_another_host(tmp_path):
    from load import fetch_model

    fetch_or_skip(lambda: fetch_model("smollm2-135m"))
    environment = {**os.environ, "CONTGPT_CACHE": str(CACHE), "PYTHONUNBUFFERED": "1"}
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        command = [sys.executable, str(ROOT / "demos" / "explore.py"), "--model", "smollm2-135m", "--port", "0"]
        process = subprocess.Popen(
            command + (["--host", host] if host != "127.0.0.1" else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
        )
        try:
            line = ""
            deadline = time.time() + 120
            while "explorer: http://" not in line and time.time() < deadline:
                line = process.stdout.readline()
            assert line.startswith("explorer: http://127.0.0.1:"), line
            assert call(line.split()[1].rstrip("/"), "/api/info")[0] == 200
        finally:
            process.terminate()
            _, err = process.communicate(timeout=30)
        assert ("WARNING: listening on 0.0.0.0" in err) == warned


# ----------------------------------------------------------------------------- a real browser


def test_one_click_shows_the_paper_s_effect(served_auto, browser, tmp_path):
    """The intro's button: the apples at 0.5 give 2 (the library's answer too), with their sweep;
    then the slider's latency, move to redrawn chart, over a few moves."""
    from selenium.webdriver.common.by import By

    model, tokenizer, url = served_auto
    open_page(browser, url)
    browser.find_element(By.ID, "demo").click()
    wait(browser, "return window.explorer.stats.sweeps === 1 && window.explorer.stats.settled", timeout=180)
    ids, span, positions, durations = apples_timeline(tokenizer, 0.5)
    _, expected = library(model, tokenizer, DIGITS, tokens=torch.tensor(ids), positions=positions, durations=durations)
    shown = browser.find_element(By.ID, "top-answer").text
    assert shown.split()[0] == DIGITS[int(expected.argmax())] == "2", shown
    assert browser.execute_script("return [...window.explorer.state.selected].sort((a, b) => a - b)") == span
    assert browser.execute_script("return document.getElementById('banner').classList.contains('hidden')")
    sweep_ms = browser.execute_script("return window.explorer.stats.lastSweepMs")
    screenshot(browser, tmp_path / "apples.png")
    assert (tmp_path / "apples.png").stat().st_size > 10000
    moves = []
    for c in (0.45, 0.55, 0.6, 0.65, 0.5):
        slide(browser, "duration", c)
        moves.append(browser.execute_script("return window.explorer.stats.lastUpdateMs"))
    assert browser.find_element(By.ID, "top-answer").text.split()[0] == "2"
    print(
        f"explorer, apples: slider to chart {sorted(moves)[2]:.0f} ms (median of {len(moves)}, {min(moves):.0f}-{max(moves):.0f}), "
        f"40-point sweep {sweep_ms:.0f} ms, {model.precision}"
    )


def test_the_page_interpolates_a_word(served_auto, browser, tmp_path):
    from selenium.webdriver.common.by import By

    model, tokenizer, url = served_auto
    open_page(browser, url)
    prompt, answers = "Question: Are apples red? (yes/no)\nAnswer:", ["yes|Yes", "no|No"]
    browser.execute_script("const p = document.getElementById('prompt'); p.value = arguments[0]; p.dispatchEvent(new Event('input'))", prompt)
    wait(browser, "return window.explorer.state.prompt === arguments[0] && window.explorer.stats.settled", prompt)
    proposed = browser.find_element(By.ID, "answers").get_attribute("value")  # from the new prompt's top tokens
    assert "Yes" in proposed or "No" in proposed, proposed
    browser.execute_script("const a = document.getElementById('answers'); a.value = 'yes|Yes, no|No'; a.dispatchEvent(new Event('input'))")
    wait(browser, SETTLED)
    browser.find_element(By.ID, "mode-interp").click()
    word = browser.execute_script("return window.explorer.state.tokens.findIndex(t => t.text.trim() === 'apples')")
    click_chip(browser, word)
    wait(browser, SETTLED)
    assert browser.find_element(By.ID, "word").text == '"apples"'
    slide(browser, "alpha", 0.5)
    swap = ex.word_swap(model, tokenizer, "Question: Are {} red? (yes/no)\nAnswer:", "apples", "bananas")
    _, expected = library(model, tokenizer, answers, embeds=swap.embeds([0.5]), durations=swap.durations)
    shown = browser.find_element(By.ID, "top-answer").text
    assert shown.split()[0] == answers[int(expected.argmax())], shown
    screenshot(browser, tmp_path / "interpolation.png")
