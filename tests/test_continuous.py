"""The continuous model's own laws: defaults, invariances, quadrature rules, zero durations."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import VOCAB, assert_close, random_timeline
from load import load

T = 9


@pytest.fixture(scope="module")
def qwen(tiny_dir):
    return load(tiny_dir("qwen2"), dtype="float32")[0]


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (T,), generator=torch.Generator().manual_seed(0))


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_defaults_are_the_discrete_model(qwen, tokens):
    ordinary = qwen(tokens)
    assert torch.equal(ordinary, qwen(tokens, positions=torch.arange(T).float()))
    assert torch.equal(ordinary, qwen(tokens, durations=torch.ones(T)))
    assert torch.equal(ordinary, qwen(tokens, positions=torch.arange(T).float(), durations=torch.ones(T)))


def test_durations_alone_imply_running_sum_positions(qwen, tokens):
    d = torch.rand(T) + 0.2
    assert torch.equal(qwen(tokens, durations=d), qwen(tokens, durations=d, positions=d.cumsum(0) - 1))


def test_positions_alone_imply_gap_durations(qwen, tokens):
    p = torch.rand(T).cumsum(0) + 5
    gaps = torch.cat((torch.ones(1), p[1:] - p[:-1]))
    assert torch.equal(qwen(tokens, positions=p), qwen(tokens, positions=p, durations=gaps))


def test_batch_of_timelines_equals_one_by_one(qwen):
    batch = torch.randint(0, VOCAB, (4, T), generator=torch.Generator().manual_seed(5))
    positions, durations = random_timeline(4, T, seed=6)
    together = qwen(batch, positions=positions, durations=durations)
    for b in range(4):
        alone = qwen(batch[b], positions=positions[b], durations=durations[b])
        assert_close(together[b], alone[0], 1e-5)  # bit for bit here (2026-12-02); another batch shape may round otherwise


def test_one_prompt_shared_by_a_batch_of_timelines(qwen, tokens):
    positions, durations = random_timeline(3, T, seed=7)
    shared = qwen(tokens, positions=positions, durations=durations)
    assert shared.shape == (3, T, VOCAB)
    assert max_diff(shared, qwen(tokens.expand(3, T), positions=positions, durations=durations)) == 0


def test_duration_scale_invariance(qwen, tokens):
    positions, durations = random_timeline(2, T, seed=8)
    base = qwen(tokens, positions=positions, durations=durations)
    for k in (0.01, 0.5, 3.0, 1000.0):
        assert_close(base, qwen(tokens, positions=positions, durations=k * durations), 1e-5)  # measured 3.3e-6 (2026-12-02)


def test_shift_invariance(qwen, tokens):
    positions, durations = random_timeline(2, T, seed=9)
    base = qwen(tokens, positions=positions, durations=durations)
    for tau in (-2.5, 0.37, 10.0):
        assert_close(base, qwen(tokens, positions=positions + tau, durations=durations), 5e-5)  # measured 5.5e-6 (2026-12-02)


def test_time_scaling_is_not_invariant(qwen, tokens):
    positions, durations = random_timeline(1, T, seed=10)
    base = qwen(tokens, positions=positions, durations=durations)
    assert max_diff(base, qwen(tokens, positions=1.5 * positions, durations=durations)) > 1e-2


def test_long_durations_are_positive_biases(qwen, tokens):
    """log d > 0 for d > 1 is legal, and it weighs the key up (unlike a 0/1 mask)."""
    d = torch.ones(T)
    d[2] = 4.0
    out = qwen(tokens, durations=d, positions=torch.arange(T).float())
    assert torch.isfinite(out).all() and max_diff(out, qwen(tokens)) > 1e-3


def test_zero_duration_hides_a_token(qwen, tokens):
    """A key of duration 0 is invisible: every other output equals the model without it."""
    d = torch.ones(T)
    d[3] = 0.0
    p = torch.arange(T).float()
    hidden = qwen(tokens, positions=p, durations=d)
    kept = [i for i in range(T) if i != 3]
    removed = qwen(tokens[kept], positions=p[kept], durations=d[kept])
    assert torch.isfinite(hidden).all()
    assert_close(hidden[0, kept], removed[0], 1e-5)  # measured 2.4e-6 (2026-12-02)


def test_a_query_that_sees_nothing_is_an_error_not_nan(qwen, tokens):
    d = torch.ones(T)
    d[:2] = 0.0
    with pytest.raises(ValueError, match="token 0 of example 0 sees no key"):
        qwen(tokens, positions=torch.arange(T).float(), durations=d)


def test_a_tiny_duration_is_almost_hidden(qwen, tokens):
    """A duration of 1e-30 among durations of 1: the key's weight is 1e-30 of its neighbours',
    so every other output equals the model with that token hidden (duration 0), up to float32;
    its own query still sees it (it is the only key with positive weight... among its own).
    Finite everywhere, not a NaN from log(1e-30)."""
    p = torch.arange(T).float()
    tiny, zero = torch.ones(T), torch.ones(T)
    tiny[4], zero[4] = 1e-30, 0.0
    almost, hidden = qwen(tokens, positions=p, durations=tiny), qwen(tokens, positions=p, durations=zero)
    assert torch.isfinite(almost).all()
    others = [i for i in range(T) if i != 4]
    assert_close(almost[0, others], hidden[0, others], 1e-5)  # bit for bit here (2026-12-02): the weight 1e-30 vanishes
    assert max_diff(almost, qwen(tokens, positions=p)) > 1e-2  # and it is not the ordinary model


def test_last_only(qwen, tokens):
    positions, durations = random_timeline(2, T, seed=11)
    full = qwen(tokens, positions=positions, durations=durations)
    last = qwen(tokens, positions=positions, durations=durations, last_only=True)
    assert last.shape == (2, 1, VOCAB)
    assert_close(last[:, 0], full[:, -1], 1e-6)  # measured 7.2e-7 (2026-12-02)


# ----------------------------------------------------------------------------- rules


def slow_reference(model, tokens, positions, durations, rule, weights_out=None):
    """The continuous Qwen2 forward written out with explicit loops over queries and keys, in
    float64: RoPE applied pair by pair with math.cos/sin at the rule's key position. If
    weights_out is a list, each layer's attention weights (H, T, T) are appended to it."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    hd, H, Hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    offset = {"right": 0.0, "left": 1.0, "midpoint": 0.5}[rule]
    key_pos = [positions[j] - offset * durations[j] for j in range(len(tokens))]

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rope(vec, t):
        out = vec.clone()
        for m in range(hd // 2):
            angle = t * cfg.rope_theta ** (-2 * m / hd)
            a, b = vec[m].item(), vec[m + hd // 2].item()
            out[m] = a * math.cos(angle) - b * math.sin(angle)
            out[m + hd // 2] = b * math.cos(angle) + a * math.sin(angle)
        return out

    x = sd["model.embed_tokens.weight"][tokens]
    for layer in range(cfg.n_layers):
        p = lambda name, layer=layer: sd[f"model.layers.{layer}.{name}"]
        h = norm(x, p("input_layernorm.weight"))
        q = (h @ p("self_attn.q_proj.weight").T + p("self_attn.q_proj.bias")).view(-1, H, hd)
        k = (h @ p("self_attn.k_proj.weight").T + p("self_attn.k_proj.bias")).view(-1, Hkv, hd)
        v = (h @ p("self_attn.v_proj.weight").T + p("self_attn.v_proj.bias")).view(-1, Hkv, hd)
        attn = torch.zeros(len(tokens), H, hd, dtype=torch.float64)
        layer_weights = torch.zeros(H, len(tokens), len(tokens), dtype=torch.float64)
        for i in range(len(tokens)):
            for head in range(H):
                kv = head // (H // Hkv)
                qi = rope(q[i, head], positions[i])
                scores = [(qi @ rope(k[j, kv], key_pos[j])).item() / math.sqrt(hd) + math.log(durations[j]) for j in range(i + 1)]
                weights = torch.tensor(scores, dtype=torch.float64).softmax(0)
                layer_weights[head, i, : i + 1] = weights
                attn[i, head] = sum(weights[j] * v[j, kv] for j in range(i + 1))
        if weights_out is not None:
            weights_out.append(layer_weights)
        x = x + attn.reshape(len(tokens), -1) @ p("self_attn.o_proj.weight").T
        h = norm(x, p("post_attention_layernorm.weight"))
        x = x + (F.silu(h @ p("mlp.gate_proj.weight").T) * (h @ p("mlp.up_proj.weight").T)) @ p("mlp.down_proj.weight").T
    x = norm(x, sd["model.norm.weight"])
    return x @ sd["lm_head.weight"].T


@pytest.mark.parametrize("rule", ["right", "left", "midpoint"])
def test_rule_matches_slow_reference(qwen, tokens, rule):
    positions, durations = random_timeline(1, T, seed=12)
    positions, durations = positions[0], durations[0]
    ours = qwen(tokens, positions=positions, durations=durations, rule=rule)[0]
    ref = slow_reference(qwen, tokens, positions.tolist(), durations.tolist(), rule)
    assert_close(ours.double(), ref, 4e-5)  # measured 2.9e-6 (right), 3.1e-6 (left), 4.2e-6 (midpoint) (2026-12-02)


def test_attention_weights_are_seen_by_a_forward_hook(qwen, tokens):
    """The named identity module on the attention probabilities: an ordinary forward hook sees
    each layer's weights (B, Hkv, rep, T, S), equal to the slow reference's, rows summing to 1."""
    positions, durations = random_timeline(1, T, seed=15)
    seen = []
    hooks = [layer.self_attn.probs.register_forward_hook(lambda m, i, out: seen.append(out)) for layer in qwen.model.layers]
    qwen(tokens, positions=positions, durations=durations)
    for hook in hooks:
        hook.remove()
    expected = []
    slow_reference(qwen, tokens, positions[0].tolist(), durations[0].tolist(), "right", expected)
    assert len(seen) == len(expected) == qwen.config.n_layers
    for probs, reference in zip(seen, expected):
        heads = probs[0].reshape(qwen.config.n_heads, T, T)  # query head h = kv head * rep + r
        assert_close(heads.double(), reference, 1e-5)
        assert_close(heads.sum(-1), torch.ones(qwen.config.n_heads, T), 1e-6)


def test_left_and_midpoint_differ_from_right(qwen, tokens):
    positions, durations = random_timeline(1, T, seed=13)
    right = qwen(tokens, positions=positions, durations=durations, rule="right")
    left = qwen(tokens, positions=positions, durations=durations, rule="left")
    mid = qwen(tokens, positions=positions, durations=durations, rule="midpoint")
    assert max_diff(right, left) > 1e-2 and max_diff(right, mid) > 1e-2 and max_diff(left, mid) > 1e-2


def test_rope_angles_are_float32_from_real_positions_in_any_dtype(qwen, tokens):
    """A bfloat16 model still places keys at exact fractional positions. Around position 200
    bfloat16 spaces numbers 1 apart, so angles computed in bf16 could not tell 200.25 from
    200.5; in float32 they can, and the rotary tables agree with float64 to 1e-5."""
    from contgpt import inverse_frequencies, rotary

    half = copy.deepcopy(qwen).to(torch.bfloat16)
    p = torch.arange(T).float() + 200.25
    a, b = half(tokens, positions=p), half(tokens, positions=p + 0.25)
    assert a.dtype == torch.float32 and max_diff(a, b) > 1e-3
    inv_freq, _ = inverse_frequencies(half.config, local=False, length=torch.tensor([float(T)]))
    cos, sin = rotary(p[None], inv_freq)
    exact = p.double()[:, None] * inv_freq.double()
    assert_close(cos[0, 0], exact.cos(), 2e-6)  # measured 2.2e-7 (2026-12-02)
    assert_close(sin[0, 0], exact.sin(), 2e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(durations=torch.tensor([1.0, -0.5, 1.0])), r"durations must be >= 0, but durations\[0, 1\] = -0.5"),
        (dict(durations=torch.tensor([1.0, 1.0, math.nan])), r"durations must be finite in float32, but at \[0, 2\] it is nan"),
        (dict(durations=torch.tensor([math.inf, 1.0, 1.0])), r"durations must be finite in float32, but at \[0, 0\]"),
        (dict(durations=torch.tensor([1.0, 1e39, 1.0], dtype=torch.float64)), r"durations must be finite in float32, but at \[0, 1\] it is inf"),
        (dict(durations=torch.tensor([1.0, 1e-46, 1.0], dtype=torch.float64)), r"durations\[0, 1\] = 1e-46 rounds to 0 in float32"),
        (dict(durations=torch.tensor([3e38, 3e38, 1.0])), r"positions \(the running sum of the durations\) must be finite"),
        (dict(positions=torch.tensor([0.0, math.nan, 2.0])), r"positions must be finite in float32, but at \[0, 1\]"),
        (dict(positions=torch.tensor([0.0, 2.0, 1.0])), r"position 2 of example 0 does not come after"),
        (dict(positions=torch.tensor([0.0, 1.0, 1.0])), r"position 2 of example 0 does not come after .* \(gap 0.0\)"),
        (dict(positions=torch.tensor([-3e38, 3e38, 3.1e38])), r"durations \(the gaps between positions\) must be finite"),
        (dict(positions=torch.tensor([0.0, 1.0, 2e6])), r"positions must lie within \+-1048576 \(2\*\*20\), but at \[0, 2\]"),
        (
            dict(positions=torch.tensor([0.0, 1.0, 2.0]), durations=torch.tensor([1.0, 1.0, 3e6]), rule="left"),
            r"key positions \(rule 'left': position - duration\) must lie within .* at \[0, 2\]",
        ),
        (
            dict(positions=torch.tensor([0.0, 1.0, 2.0]), durations=torch.tensor([3e38, 1.0, 1.0]), rule="midpoint"),
            r"key positions \(rule 'midpoint': position - duration / 2\) must lie within .* at \[0, 0\]",
        ),
        (dict(positions=torch.zeros(4)), r"positions must have shape \(3,\) or \(B, 3\) to match the input, not \(4,\)"),
        (dict(durations=torch.ones(2, 3, 1)), r"durations must have shape"),
        (dict(durations=torch.ones(0, 3)), r"durations hold an empty batch \(0, 3\)"),
        (dict(durations=torch.tensor([True, True, True])), r"durations must be real numbers, not torch.bool"),
        (dict(positions=torch.zeros(2, 3), durations=torch.ones(3, 3)), r"batch sizes do not match"),
        (dict(rule="trapezoid"), r"unknown rule 'trapezoid'"),
    ],
)
def test_bad_timelines_raise(qwen, kwargs, message):
    with pytest.raises(ValueError, match=message):
        qwen(torch.tensor([1, 2, 3]), **kwargs)


def test_negative_positions_are_allowed_and_shift_invariant(qwen, tokens):
    """Positions are any real numbers within range, negative ones too (a timeline is defined up
    to a shift; the left rule puts keys before 0 anyway)."""
    positions, durations = random_timeline(1, T, seed=14)
    assert_close(
        qwen(tokens, positions=positions - 50, durations=durations), qwen(tokens, positions=positions, durations=durations), 1e-4
    )  # measured 1.2e-5


def test_bad_inputs_raise(qwen):
    with pytest.raises(ValueError, match=r"token id 101 at index \(0, 1\) is outside the vocabulary \[0, 101\)"):
        qwen(torch.tensor([[1, 101, 2]]))
    with pytest.raises(ValueError, match="token id -1"):
        qwen(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="must be integers"):
        qwen(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="exactly one of tokens= or embeds="):
        qwen()
    with pytest.raises(ValueError, match="exactly one of tokens= or embeds="):
        qwen(torch.tensor([1]), embeds=torch.zeros(1, 1, qwen.config.dim))
    with pytest.raises(ValueError, match=r"embeds must have shape \(T, 32\) or \(B, T, 32\)"):
        qwen(embeds=torch.zeros(1, 3, 7))
    for dtype in (torch.int64, torch.int8, torch.bool):  # rows of a table are real numbers; ids go in tokens=
        with pytest.raises(ValueError, match=f"embeds must be floating point, not {dtype}"):
            qwen(embeds=torch.zeros(1, 3, 32, dtype=dtype))
    with pytest.raises(ValueError, match=r"embeds\[0, 0\] holds NaN or infinite values"):
        qwen(embeds=torch.full((1, 3, 32), math.nan))
    with pytest.raises(ValueError, match=r"embeds\[0, 2\] holds NaN or infinite values in torch.float32"):
        qwen(embeds=torch.tensor([[[0.0] * 32] * 2 + [[1e39] * 32]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"tokens must have shape \(T,\) or \(B, T\)"):
        qwen(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"with B, T > 0, not \(0, 4\)"):
        qwen(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"with B, T > 0, not \(0, 3, 32\)"):
        qwen(embeds=torch.zeros(0, 3, 32))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_any_integer_dtype_is_a_token_id(qwen, dtype):
    assert torch.equal(qwen(torch.tensor([3, 1, 4], dtype=dtype)), qwen(torch.tensor([3, 1, 4])))
