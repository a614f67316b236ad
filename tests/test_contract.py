"""The forward contract, fuzzed: shapes, dtypes, batch layouts, token ids, positions and
durations (0, tiny, huge, NaN, inf, negative, float64), rules, caches and embeds drawn by
hypothesis (fixed seed, bounded examples) for tiny random models. Every call returns finite
float32 logits of the right shape or raises ValueError; a valid call equals the same call split
into a cached prefix and a continuation, and its last position equals sweep.last_logits. And
random text round-trips through every byte-level tokenizer."""

import math
import unicodedata

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import VOCAB, assert_close, fetch_or_skip, for_dtype, llama3_tokenizer_file, llama_cpp_vocab_dir
from contgpt import KVCache
from load import load
from sweep import last_logits

FUZZ = settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
QUICK = settings(FUZZ, max_examples=100)
MODELS = ("qwen2", "gemma2")  # plain, and soft-capped with sliding windows and embedding scaling


@pytest.fixture(scope="module")
def models(tiny_dir, dtype):
    return {name: load(tiny_dir(name), dtype=dtype)[0] for name in MODELS}


SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e-46, 3e38, 1e39, 2e6, -2e6, math.nan, math.inf, -math.inf, 7.25]
DTYPES = [torch.float32, torch.float64, torch.int64]


@st.composite
def numbers(draw, rows, T, kind):
    """(rows, T) values: plausible ones, with now and then a special value dropped in."""
    if kind == "positions":
        start = draw(st.floats(-50, 50))
        steps = draw(st.lists(st.floats(0.05, 3.0), min_size=rows * T, max_size=rows * T))
        values = torch.tensor(steps, dtype=torch.float64).view(rows, T).cumsum(1) + start
    else:
        values = torch.tensor(draw(st.lists(st.floats(0.0, 4.0), min_size=rows * T, max_size=rows * T)), dtype=torch.float64).view(rows, T)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        values[draw(st.integers(0, rows - 1)), draw(st.integers(0, T - 1))] = draw(st.sampled_from(SPECIAL))
    dtype = draw(st.sampled_from(DTYPES))
    values = values if dtype != torch.int64 else torch.nan_to_num(values, nan=0, posinf=1e6, neginf=-1e6).round()
    values = values.to(dtype)
    return values[0] if rows == 1 and draw(st.booleans()) else values


@st.composite
def calls(draw):
    """keyword arguments for one forward of a tiny model (a few of them invalid on purpose)."""
    name = draw(st.sampled_from(MODELS))
    T = draw(st.integers(1, 8))
    B = draw(st.sampled_from([1, 1, 2, 3]))
    call = {"rule": draw(st.sampled_from(["right", "right", "left", "midpoint"])), "last_only": draw(st.booleans())}
    if draw(st.integers(0, 19)) == 19:  # (hypothesis favours small numbers: the rare case is the largest)
        call["rule"] = "trapezoid"
    if draw(st.booleans()):
        ids = torch.tensor(draw(st.lists(st.integers(0, VOCAB - 1), min_size=B * T, max_size=B * T))).view(B, T)
        if draw(st.integers(0, 9)) == 9:
            ids[0, -1] = draw(st.sampled_from([-1, VOCAB, 10**6]))
        dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8, torch.int64, torch.int64, torch.float32]))
        call["tokens"] = (ids.clamp(0, 255) if dtype == torch.uint8 else ids).to(dtype)
        if B == 1 and draw(st.booleans()):
            call["tokens"] = call["tokens"][0]
    else:
        seed = draw(st.integers(0, 2**16))
        embeds = torch.randn(B, T, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        if draw(st.integers(0, 9)) == 9:
            embeds[0, -1, 0] = draw(st.sampled_from([math.nan, math.inf, 1e39]))
        kind = draw(st.sampled_from([torch.float32, torch.float64, torch.float32, torch.float64, torch.int64, torch.bool]))
        call["embeds"] = embeds.round().to(kind) if kind == torch.int64 else (embeds > 0) if kind == torch.bool else embeds.to(kind)
    timeline_rows = draw(st.sampled_from([1, B]))
    if draw(st.booleans()):
        call["positions"] = draw(numbers(timeline_rows, T, "positions"))
    if draw(st.booleans()):
        call["durations"] = draw(numbers(timeline_rows, T, "durations"))
    if draw(st.integers(0, 19)) == 19:
        call["durations"] = torch.ones(timeline_rows, T + 1)  # the wrong length
    return name, call


def check(model, call, cache=None):
    """The contract: finite float32 logits of the right shape, or a ValueError. Returns the logits or None.
    Integer or boolean embeddings are always a ValueError (cast, they would run as nonsense)."""
    if "embeds" in call and not call["embeds"].is_floating_point():
        with pytest.raises(ValueError):  # this one, or another problem of the call found first
            model(**call, cache=cache)
        return None
    try:
        logits = model(**call, cache=cache)
    except ValueError:
        return None
    inputs = call.get("tokens", call.get("embeds"))
    T = inputs.shape[-1] if "tokens" in call else inputs.shape[-2]
    assert logits.dtype == torch.float32 and logits.shape[1:] == (1 if call["last_only"] else T, VOCAB)
    assert torch.isfinite(logits).all()
    return logits


def part(call, columns):
    """The same call on some token columns (timelines and inputs sliced alike)."""
    out = dict(call)
    for key in ("tokens", "positions", "durations"):
        if key in out:
            out[key] = out[key][..., columns]
    if "embeds" in out:
        out["embeds"] = out["embeds"][:, columns]
    return out


# Each property runs twice: 2000 drawn calls in the full run, 100 in the quick tier (-m "not slow").


def every_call_is_logits_or_a_value_error(models, drawn):
    name, call = drawn
    check(models[name], call)


def a_valid_call_equals_a_cached_prefix_and_its_continuation(models, drawn, data):
    name, call = drawn
    model = models[name]
    call["last_only"] = False
    full = check(model, call)
    T = full.shape[1] if full is not None else 0
    if full is None or T < 2:
        return
    k = data.draw(st.integers(1, T - 1))
    cache = KVCache(call["rule"])
    first = model(**part(call, slice(0, k)), cache=cache)
    rest = model(**part(call, slice(k, T)), cache=cache)
    assert_close(first, full[:, :k], for_dtype(model.dtype, 7e-5, full))  # measured at most 6.9e-6 over the fixed draws (2026-12-02)
    assert len(cache) == T
    assert_close(rest, full[:, k:], for_dtype(model.dtype, 7e-5, full))


def last_logits_equals_plain_forwards(models, drawn):
    name, call = drawn
    model = models[name]
    call["last_only"] = True
    if call["rule"] == "trapezoid" or (full := check(model, call)) is None:
        return
    inputs = {k: call[k] for k in ("tokens", "embeds", "positions", "durations") if k in call}
    swept = last_logits(model, rule=call["rule"], **inputs)
    assert_close(swept, full[:, 0], for_dtype(model.dtype, 7e-5, full))  # measured at most 5.1e-6 over the fixed draws (2026-12-02)


def fuzzed(prop, *strategies):
    """The slow test of 2000 calls and the quick one of 100, of one property."""
    full = pytest.mark.slow(FUZZ(given(*strategies)(prop)))
    quick = QUICK(given(*strategies)(prop))
    return full, quick


test_every_call_is_logits_or_a_value_error, test_every_call_is_logits_or_a_value_error_quick = fuzzed(every_call_is_logits_or_a_value_error, calls())
test_a_valid_call_equals_a_cached_prefix_and_its_continuation, test_a_valid_call_equals_a_cached_prefix_quick = fuzzed(
    a_valid_call_equals_a_cached_prefix_and_its_continuation, calls(), st.data()
)
test_last_logits_equals_plain_forwards, test_last_logits_equals_plain_forwards_quick = fuzzed(last_logits_equals_plain_forwards, calls())


# ----------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def byte_level(trained_bpe_json):
    """Every byte-level BPE tokenizer here, with the normalization its vocabulary applies."""
    from gguf_file import GGUFFile
    from gguf_vocab import gguf_tokenizer_files
    from tokenizer import Tokenizer

    found = {
        "trained": (Tokenizer.from_file(trained_bpe_json), None),
        "llama3 (tiktoken)": (Tokenizer.from_file(fetch_or_skip(llama3_tokenizer_file)), None),
    }
    folder = fetch_or_skip(llama_cpp_vocab_dir)
    for vocab, normal in (("llama-bpe", None), ("qwen2", "NFC")):
        files = gguf_tokenizer_files(GGUFFile(folder / f"ggml-vocab-{vocab}.gguf").metadata)
        path = trained_bpe_json.parent / f"{vocab}.json"
        path.write_text(files["tokenizer.json"], encoding="utf-8")
        found[vocab] = (Tokenizer.from_file(path), normal)
    return found


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=40))
def test_random_text_round_trips_through_byte_level_tokenizers(byte_level, text):
    for name, (tokenizer, normal) in byte_level.items():
        expected = unicodedata.normalize(normal, text) if normal else text
        assert tokenizer.decode(tokenizer.encode(text, bos=False)) == expected, name
