"""The sweep engine's prefix cache and batching, and the KV cache behind generation."""

import math

import pytest
import torch

import experiments as ex
from conftest import VOCAB, assert_close, for_dtype, random_timeline
from contgpt import KVCache
from load import load
from sweep import auto_batch_size, last_logits, shared_prefix_length

# float32 logits of the three tiny models, a sweep's batched, cached, prefix-shared forward against
# plain ones (2026-12-02): 7.2e-7 to 4.1e-6 (largest: step-by-step decoding, qwen2; per test and
# family in docs/tests.md). Tolerance about 10x the largest. In bfloat16: conftest.for_dtype.
TOL = 4e-5


@pytest.fixture(scope="module", params=["qwen2", pytest.param("mistral", marks=pytest.mark.slow), pytest.param("gemma2", marks=pytest.mark.slow)])
def model(request, tiny_dir, dtype):
    """Plain, sliding-window (every layer; window 4) and mixed soft-capped models, in float32 and
    bfloat16; the quick tier takes the plain one (the contract's fuzz covers the others there)."""
    return load(tiny_dir(request.param), dtype=dtype)[0]


def tol(model, reference) -> float:
    return for_dtype(model.dtype, TOL, reference)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(0))


def both_ways(model, **inputs):
    """The same sweep with its prefix shared and without, in uneven batches."""
    shared = last_logits(model, **inputs, batch_size=4)
    alone = last_logits(model, **inputs, batch_size=3, share_prefix=False)
    return shared, alone


def test_shrink_sweep_with_shared_prefix(model, tokens):
    positions, durations = ex.shrink(12, [5, 6, 7], torch.linspace(0.1, 1.0, 9))
    assert shared_prefix_length({"positions": positions, "durations": durations}) == 5
    shared, alone = both_ways(model, tokens=tokens, positions=positions, durations=durations)
    assert shared.shape == (9, VOCAB)
    assert_close(shared, alone, tol(model, alone))


def test_shift_sweep_differs_at_token_zero(model, tokens):
    positions, durations = ex.shift(12, torch.linspace(0.0, 5.0, 7))
    assert shared_prefix_length({"positions": positions, "durations": durations}) == 0
    shared, alone = both_ways(model, tokens=tokens, positions=positions, durations=durations)
    assert_close(shared, alone, tol(model, alone))


def test_interpolation_sweep_with_shared_prefix(model, tokens):
    rows = model.embed(tokens)
    alphas = torch.linspace(0, 1, 6)
    embeds = rows.expand(6, -1, -1).clone()
    embeds[:, 8] = ex.interpolate(rows[8], model.embed(torch.tensor(3)), alphas)
    durations = torch.ones(12)
    durations[8] = 0.7
    assert shared_prefix_length({"embeds": embeds}) == 8
    shared, alone = both_ways(model, embeds=embeds, durations=durations)
    assert_close(shared, alone, tol(model, alone))


def test_identical_points_still_run_their_last_token(model, tokens):
    logits = last_logits(model, tokens, durations=torch.ones(3, 12))
    plain = model(tokens)[0, -1].expand(3, -1)
    assert_close(logits, plain, tol(model, plain))


def test_per_point_tokens(model):
    batch = torch.randint(0, VOCAB, (5, 10), generator=torch.Generator().manual_seed(1))
    batch[:, :6] = batch[0, :6]  # a shared prefix, then different tokens
    shared, alone = both_ways(model, tokens=batch)
    assert_close(shared, alone, tol(model, alone))
    assert_close(alone, model(batch)[:, -1], tol(model, alone))


def test_auto_batch_size_follows_rows_and_memory(model, monkeypatch):
    import sweep

    monkeypatch.setattr(sweep, "free_memory", lambda: 64 << 30)
    monkeypatch.setattr(sweep, "CPU_BATCH_TOKENS", 200)
    assert auto_batch_size(model, 1000, 20, 30) == 10  # 200 rows of 20 new tokens
    assert auto_batch_size(model, 25, 20, 30) == 9  # 10 fit: three batches of 9, 9, 7, not 10, 10, 5
    assert auto_batch_size(model, 3, 20, 30) == 3
    assert auto_batch_size(model, 5, 500, 510) == 1  # a point longer than the row budget still runs
    assert auto_batch_size(model, 1000, 1, 30) == 200  # one new token a point: 200 rows
    monkeypatch.setattr(sweep, "CPU_BATCH_TOKENS", 10**9)
    one_point = auto_batch_size(model, 10**6, 20, 30)
    monkeypatch.setattr(sweep, "free_memory", lambda: 4 * 1024 * 1024)  # a quarter: 1 MiB for the batch
    squeezed = auto_batch_size(model, 10**6, 20, 30)
    assert 1 <= squeezed < one_point
    cache = KVCache()  # what a point's keys, values and logits really take: part of the estimate, so they fit
    logits = model(torch.zeros(1, 30, dtype=torch.long), cache=cache, last_only=True)
    kv_bytes = sum(t.numel() * t.element_size() for t in (*cache.keys.values(), *cache.values.values()))
    assert squeezed * (kv_bytes + logits.numel() * logits.element_size()) <= 1024 * 1024
    sizes = {}
    for free in (64 << 20, 128 << 20, 64 << 30, 128 << 30):
        monkeypatch.setattr(sweep, "free_memory", lambda free=free: free)
        sizes[free] = auto_batch_size(model, 10**7, 20, 30)
    assert sizes[128 << 20] == pytest.approx(2 * sizes[64 << 20], rel=0.01)  # a share of what is free
    assert sizes[64 << 30] == sizes[128 << 30]  # but at most 1 GiB on the CPU, however much is free:
    assert sizes[64 << 30] == pytest.approx(64 * sizes[64 << 20], rel=0.01)  # 64 x a quarter of 64 MiB


def test_free_memory_is_what_linux_says_is_available(monkeypatch):
    import io

    import sweep

    meminfo = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    7000000 kB\n"
    monkeypatch.setattr(sweep, "open", lambda path: io.StringIO(meminfo if path == "/proc/meminfo" else ""), raising=False)
    assert sweep.free_memory() == 7000000 * 1024  # available (free plus reclaimable), not free

    def unreadable(path):
        raise OSError("no /proc here")

    monkeypatch.setattr(sweep, "open", unreadable, raising=False)
    assert sweep.free_memory() == sweep.os.sysconf("SC_AVPHYS_PAGES") * sweep.os.sysconf("SC_PAGE_SIZE")


def test_the_shared_prefix_ends_at_the_first_column_where_two_points_differ():
    tokens = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 9]])
    assert shared_prefix_length({"tokens": tokens}) == 3
    assert shared_prefix_length({"tokens": tokens[:1]}) == 5  # one point: all of it is shared
    embeds = torch.zeros(2, 5, 4)
    embeds[1, 2, 3] = 1.0  # one feature of one token
    assert shared_prefix_length({"tokens": tokens[:1], "embeds": embeds}) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(tokens=torch.zeros(3, 12, dtype=torch.long), positions=torch.zeros(4, 12)),
            r"one row .* or one per point, 4; got \{'tokens': 3, 'positions': 4\}",
        ),
        (dict(tokens=torch.zeros(12, dtype=torch.long), durations=torch.ones(12), positions=torch.zeros(11)), "the same tokens; lengths"),
        (dict(), "give exactly one of tokens= or embeds="),
        (dict(tokens=torch.zeros(12, dtype=torch.long), batch_size=0), "batch_size must be None .* not 0"),
        (dict(tokens=torch.zeros(12, dtype=torch.long), batch_size=-2), "batch_size must be None .* not -2"),
        (dict(tokens=torch.zeros(0, 12, dtype=torch.long)), "at least one point and one token"),
        (dict(tokens=torch.zeros(2, 3, 4, dtype=torch.long)), r"tokens must have shape \(T,\) or \(N, T\)"),
        (dict(embeds=torch.zeros(12)), r"embeds must have shape \(T, dim\) or \(N, T, dim\), not \(12,\)"),
    ],
)
def test_bad_sweeps_are_named(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        last_logits(model, **kwargs)


# ----------------------------------------------------------------------------- KV cache


def test_step_by_step_decoding_equals_full_forward(model):
    """A continuous prefix into the cache, then one token at a time: the same logits as one
    forward over the whole sequence with the combined timeline."""
    g = torch.Generator().manual_seed(2)
    prefix, new = torch.randint(0, VOCAB, (9,), generator=g), torch.randint(0, VOCAB, (6,), generator=g)
    positions, durations = random_timeline(1, 9, seed=3)
    cache = KVCache()
    steps = [model(prefix, positions=positions[0], durations=durations[0], cache=cache)[0, -1]]
    for token in new[:-1]:
        steps.append(model(token[None], positions=cache.positions[0, -1:] + 1, durations=torch.ones(1), cache=cache)[0, -1])
    all_positions = torch.cat((positions[0], positions[0, -1] + torch.arange(1, 6)))
    all_durations = torch.cat((durations[0], torch.ones(5)))
    full = model(torch.cat((prefix, new[:-1])), positions=all_positions, durations=all_durations)[0, 8:]
    assert_close(torch.stack(steps), full, tol(model, full))
    assert len(cache) == 14


def test_cache_defaults_continue_the_timeline(model, tokens):
    """Without positions, new tokens follow the cache's last position with duration 1."""
    positions, durations = random_timeline(1, 12, seed=4)
    cache = KVCache()
    model(tokens[:8], positions=positions[0, :8], durations=durations[0, :8], cache=cache)
    stepped = model(tokens[8:], cache=cache)
    whole_pos = torch.cat((positions[0, :8], positions[0, 7] + torch.arange(1, 5)))
    whole_dur = torch.cat((durations[0, :8], torch.ones(4)))
    full = model(tokens, positions=whole_pos, durations=whole_dur)[:, 8:]
    assert_close(stepped, full, tol(model, full))


def test_a_one_example_cache_continues_a_batch(model, tokens):
    """One cached prefix, two continuations on their own timelines: each equals its own full
    forward (the cache is shared, not copied), and the cache then holds both."""
    positions, durations = random_timeline(2, 12, seed=6)
    durations[:, :8], positions[:, :8] = durations[0, :8], positions[0, :8]
    cache = KVCache()
    model(tokens[:8], positions=positions[0, :8], durations=durations[0, :8], cache=cache)
    both = model(tokens[8:], positions=positions[:, 8:], durations=durations[:, 8:], cache=cache)
    full = model(tokens, positions=positions, durations=durations)[:, 8:]
    assert cache.batch_size == 2 and len(cache) == 12
    assert_close(both, full, tol(model, full))


def test_a_failed_forward_leaves_the_cache_as_it_was(model, tokens):
    """Ctrl-C (or running out of memory) half-way through the layers: the cache neither holds
    the new timeline nor some layers' keys, and continuing from it gives the right answer."""
    cache = KVCache()
    model(tokens[:6], cache=cache)
    keys = {i: k.clone() for i, k in cache.keys.items()}

    def interrupt(module, args):
        raise KeyboardInterrupt

    hook = model.model.layers[1].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        model(tokens[6:9], cache=cache)
    hook.remove()
    assert len(cache) == 6 and all(torch.equal(cache.keys[i], k) for i, k in keys.items())
    full = model(tokens)[:, 6:]
    assert_close(model(tokens[6:], cache=cache), full, tol(model, full))


def test_cache_misuse_is_an_error(model, tokens):
    cache = KVCache("left")
    model(tokens[:4], rule="left", cache=cache)
    with pytest.raises(ValueError, match="keys placed by rule 'left', not 'right'"):
        model(tokens[4:6], cache=cache)
    with pytest.raises(ValueError, match="batch sizes do not match"):
        model(tokens[4:6].expand(3, 2), rule="left", cache=cache.expand(2))
    with pytest.raises(ValueError, match="only a cache of one example can be expanded"):
        cache.expand(2).expand(4)


def test_generate_greedy_equals_argmax_decoding(model, tokens):
    positions, durations = random_timeline(1, 12, seed=5)
    out = model.generate(tokens, 6, positions=positions[0], durations=durations[0])
    seq, pos, dur = tokens.clone(), positions[0].clone(), durations[0].clone()
    for _ in range(6):  # the slow way: a full forward per token
        nxt = model(seq, positions=pos, durations=dur)[0, -1].argmax()
        seq, pos, dur = torch.cat((seq, nxt[None])), torch.cat((pos, pos[-1:] + 1)), torch.cat((dur, torch.ones(1)))
    assert out == seq[12:].tolist()


def test_generate_with_seed_is_reproducible(model, tokens):
    a = model.generate(tokens, 8, temperature=1.5, top_k=20, seed=7)
    b = model.generate(tokens, 8, temperature=1.5, top_k=20, seed=7)
    c = model.generate(tokens, 8, temperature=1.5, top_k=20, seed=8)
    assert a == b and len(a) == 8 and a != c
    with pytest.raises(ValueError, match="temperature must be finite and >= 0"):
        model.generate(tokens, 2, temperature=-1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(top_k=0), "top_k must be None or an integer >= 1, not 0"),
        (dict(top_k=-3), "top_k must be None or an integer >= 1, not -3"),
        (dict(temperature=math.nan), "temperature must be finite"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, not 0"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 1"),
        (dict(durations=torch.ones(2, 12)), "the timeline given holds 2 rows"),
    ],
)
def test_generate_refuses_what_it_cannot_do(model, tokens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(tokens, **{"max_new_tokens": 3, **kwargs})


def test_a_tiny_temperature_samples_among_the_largest_logits():
    """logits / 1e-45 would be inf - inf = NaN; relative to the maximum it is 0 or -inf."""
    from contgpt import sample

    g = torch.Generator().manual_seed(0)
    assert {sample(torch.tensor([1.0, 3.0, -2.0]), 1e-45, None, g) for _ in range(20)} == {1}
    assert {sample(torch.tensor([3.0, 1.0, 3.0]), 1e-45, None, g) for _ in range(50)} == {0, 2}  # a tie: either


def test_generate_stops_before_a_stop_token(model, tokens):
    free = model.generate(tokens, 5)
    assert model.generate(tokens, 5, stop={free[2]}) == free[: free.index(free[2])]
