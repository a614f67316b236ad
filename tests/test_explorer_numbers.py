"""The explorer's numbers against the library, in float32 and in bfloat16 (the bf16 lane): what
holds in each dtype, tested as stated in docs/explorer.md.

- Exactly, in either dtype: a prediction is the library call made the way the page makes it (the
  tokens before the first changed one from a KV cache, then the rest); its attention is what a
  forward hook on that call sees; the attention "before" is a plain forward's; an interpolation
  is ex.word_swap's call; a sweep is sweep.last_logits. Same operations on the same shapes.
- Within the dtype's rounding: a prediction against one plain forward of the whole prompt (the
  page's prefix cache runs other matmul shapes, so a 16-bit model rounds otherwise).

A tiny random model with a trained tokenizer stands in for the default one (the real model's
float32 checks are in test_explorer.py)."""

import json
import math
import threading
import urllib.request

import pytest
import torch

import experiments as ex
from conftest import assert_close, for_dtype, tiny_explorer_model
from contgpt import KVCache
from demos import explore
from sweep import last_logits
from tokenizer import Tokenizer

PROMPT = "apple apple apple apple pear"
ANSWERS = ["1", "2", "3"]


@pytest.fixture(scope="module")
def explorer(trained_bpe_json, dtype):
    tokenizer = Tokenizer.from_file(trained_bpe_json)
    return explore.Explorer(tiny_explorer_model(tokenizer, 0.3, dtype), tokenizer, "tiny")


def timeline(explorer, c: float, keep: bool):
    """The prompt's ids and its inputs with tokens 2 and 3 at duration c, placed as the page does."""
    ids = explorer.tokenizer.encode(PROMPT)
    durations = [1.0] * len(ids)
    durations[2] = durations[3] = c
    return ids, durations, explore.place(torch.tensor([durations]), keep)


def hooked(model, layer: int, call):
    """(what call() returns, the attention weights the hook saw: (heads, keys) of the last query)."""
    seen = []
    hook = model.model.layers[layer].self_attn.probs.register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        with torch.no_grad():
            out = call()
    finally:
        hook.remove()
    return out, seen[-1][0, :, :, -1].reshape(model.config.n_heads, -1)


def probability_tolerance(dtype, logits: torch.Tensor) -> float:
    """Logits within d of each other give probabilities within p * (exp(2d) - 1) <= exp(2d) - 1
    (the softmax's numerator moves by at most exp(d), its denominator by at most exp(-d))."""
    return math.expm1(2 * for_dtype(dtype, 2e-6, logits))


@pytest.mark.parametrize("keep", [False, True])
def test_a_prediction_is_the_library_call_the_page_makes(explorer, keep):
    model, tokenizer = explorer.model, explorer.tokenizer
    ids, durations, placed = timeline(explorer, 0.5, keep)
    data = explorer.predict({"prompt": PROMPT, "answers": ANSWERS, "layer": 1, "durations": durations, "keep_positions": keep})
    cache = KVCache()
    with torch.no_grad():
        model(torch.tensor([ids[:2]]), cache=cache)  # tokens 0 and 1 keep duration 1: the prefix
    rest = {"tokens": torch.tensor([ids[2:]]), "positions": placed["positions"][:, 2:], "durations": placed["durations"][:, 2:]}
    logits, weights = hooked(model, 1, lambda: model(**rest, cache=cache, last_only=True)[:, -1])
    probs = ex.answer_probs(logits, tokenizer, ANSWERS)[0][0]
    assert [data["answers"][a] for a in ANSWERS] == probs.tolist()  # exactly, in either dtype
    assert data["attention"]["after"] == weights.mean(0).tolist()
    assert data["positions"] == placed["positions"][0].tolist()
    with torch.no_grad():
        whole = model(torch.tensor(ids), **placed, last_only=True)[:, -1]
    assert_close(
        torch.tensor([data["answers"][a] for a in ANSWERS]),
        ex.answer_probs(whole, tokenizer, ANSWERS)[0][0],
        probability_tolerance(model.dtype, whole),
    )


def test_the_attention_before_is_a_plain_forward_s(explorer):
    model = explorer.model
    ids, durations, _ = timeline(explorer, 0.3, False)
    data = explorer.predict({"prompt": PROMPT, "answers": ANSWERS, "layer": 0, "head": 2, "durations": durations})
    _, weights = hooked(model, 0, lambda: model(torch.tensor([ids]), last_only=True))
    assert data["attention"]["before"] == weights[2].tolist()
    for when in ("after", "before"):  # float32 softmax weights in either dtype: 1 to float32's rounding
        assert sum(data["attention"][when]) == pytest.approx(1.0, abs=len(ids) * 2**-23)


def test_an_interpolation_is_the_library_s_word_swap(explorer):
    model, tokenizer = explorer.model, explorer.tokenizer
    start = PROMPT.index("pear")
    spec = {"start": start, "end": start + 4, "other": "apple", "alpha": 0.4, "method": "slerp"}
    data = explorer.predict({"prompt": PROMPT, "answers": ANSWERS, "layer": 0, "interpolation": spec})
    swap = ex.word_swap(model, tokenizer, PROMPT[:start] + "{}", "pear", "apple")
    with torch.no_grad():
        logits = model(embeds=swap.embeds([0.4], "slerp"), durations=swap.durations, last_only=True)[:, -1]
    assert [data["answers"][a] for a in ANSWERS] == ex.answer_probs(logits, tokenizer, ANSWERS)[0][0].tolist()


def test_a_sweep_is_sweep_last_logits(explorer):
    model, tokenizer = explorer.model, explorer.tokenizer
    ids = tokenizer.encode(PROMPT)
    body = {"prompt": PROMPT, "answers": ANSWERS, "layer": 0, "selected": [2, 3], "low": 0.2, "high": 1.0, "points": 5}
    result = explorer.sweep(explorer.sweep_plan(body), lambda done, total: None)
    durations = torch.ones(5, len(ids))
    durations[:, 2:4] = torch.linspace(0.2, 1.0, 5)[:, None]
    with torch.no_grad():
        logits = last_logits(model, torch.tensor(ids), **explore.place(durations, False))
    expected = ex.answer_probs(logits, tokenizer, ANSWERS)[0]
    assert [result["curves"][a] for a in ANSWERS] == expected.T.tolist()


def test_the_server_answers_what_the_explorer_computes(explorer):
    """Over HTTP, through the prefix cache a previous request left: the same numbers."""
    server = explore.serve(explorer, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        _, durations, _ = timeline(explorer, 0.7, False)
        body = {"prompt": PROMPT, "answers": ANSWERS, "layer": 1, "durations": durations}
        direct = explorer.predict(body)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            served = json.loads(response.read())
    finally:
        server.shutdown()
        server.server_close()
    assert served["answers"] == direct["answers"] and served["attention"] == direct["attention"]
    assert f"dtype={explorer.model.precision.name!r}" in served["code"]  # the code runs in the page's dtype
