"""Checkers for the tutorials' exercises: each compares your answer with the truth, computed here
(or by contgpt's own function) from the same inputs, and says what is wrong (with a hint) or
that it is right. Import it after putting the checkout on sys.path, as the notebooks do.

An exercise cell starts with `answer = ...`; left like that, its checker only says that the
exercise is open (so a notebook still runs top to bottom). Any other answer is checked, and a
wrong one raises AssertionError. The solutions are at the end of each notebook.
"""

from __future__ import annotations

import numpy as np
import torch

import contgpt
import experiments as ex
import lens
import paper

OPEN = "not answered yet: replace the ... with your answer (the solution is at the end of the notebook)"


def _open(answer) -> bool:
    if answer is Ellipsis:
        print(OPEN)
        return True
    return False


def _right(ok: bool, hint: str) -> None:
    if not ok:
        raise AssertionError(f"not quite. {hint}")
    print("right!")


def _close(answer, truth, tol: float) -> bool:
    try:
        answer = torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return False
    truth = torch.as_tensor(truth, dtype=torch.float64)
    return answer.shape == truth.shape and bool(torch.allclose(answer, truth, rtol=0, atol=tol))


# ----------------------------------------------------------------------------- 1: the ordinary model is d = 1


def reweighted(answer, weights, durations) -> None:
    """Attention weights (one query over its keys) after the keys get these durations."""
    if _open(answer):
        return
    w = torch.as_tensor(weights, dtype=torch.float64) * torch.as_tensor(durations, dtype=torch.float64)
    _right(_close(answer, w / w.sum(), 1e-6), "A duration multiplies a key's exp(score), so its weight becomes w_j d_j / sum_k w_k d_k.")


def duration_for_weight(answer, weight: float, target: float) -> None:
    """The duration that takes one key's weight from `weight` (all durations 1) to `target`."""
    if _open(answer):
        return
    truth = target * (1 - weight) / (weight * (1 - target))
    _right(_close(answer, truth, 1e-6 * max(1.0, truth)), "Solve d w / (d w + 1 - w) = target for d: the other keys keep their total 1 - w.")


def _call(function, hint: str, *args):
    """Your function called on the checker's inputs; if it raises, the error is reported as a
    wrong answer with the hint, not as a traceback from inside the checker."""
    if not callable(function):
        raise AssertionError(f"not quite. This exercise asks for a function (def ...), not {type(function).__name__}. {hint}")
    try:
        return function(*args)
    except Exception as error:  # a bug in the exercise's code is the student's to fix: say what it raised
        raise AssertionError(f"not quite. Your function raised {type(error).__name__}: {error}. {hint}") from None


def _agrees_on(function, hint: str, cases, tol: float) -> bool:
    """Whether your function gives the truth on every (arguments, truth) case a checker drew."""
    return all(_close(_call(function, hint, *args), truth, tol) for args, truth in cases)


def _hooked(module, call):
    """What module's forward returned while call() ran, caught by a forward hook."""
    seen = []
    hook = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with torch.no_grad():
            call()
    finally:
        hook.remove()
    return seen[0]


def layer0_attention(answer, model, tokens, positions, durations, rule: str = "right") -> None:
    """Layer 0's attention output (T, dim) for this timeline and quadrature rule, against the
    model's own, which the checker catches itself (float32: equal to about 1e-4)."""
    if _open(answer):
        return
    run = lambda: model(tokens, positions=positions, durations=durations, rule=rule)
    out = _hooked(model.model.layers[0].self_attn, run)
    hint = "log d is added to every visible key's score, before the softmax"
    if rule != "right":
        hint += f"; under the {rule} rule only the keys move (to t - {contgpt.RULES[rule]} d), the queries stay at t"
    _right(_close(answer, out[0], 1e-4), f"Compare shapes first; give attention_by_hand the same positions and durations as the model ({hint}).")


# ----------------------------------------------------------------------------- 2: positions are real numbers


def rotation_angle(answer, position: float, pair: int, head_dim: int, theta: float) -> None:
    """The angle in radians by which RoPE turns channel pair `pair` at this position."""
    if _open(answer):
        return
    truth = position * theta ** (-2 * pair / head_dim)
    _right(_close(answer, truth, 1e-6 * max(1.0, abs(truth))), "The pair i turns at frequency theta^(-2i/head_dim) radians per unit of time.")


def equivalent_key_position(answer, query: float, reference_query: float, reference_key: float) -> None:
    """Where a key must sit so that a query at `query` scores it as one at `reference_query`
    scores a key at `reference_key`."""
    if _open(answer):
        return
    _right(_close(answer, query - (reference_query - reference_key), 1e-9), "RoPE scores depend only on the distance query - key.")


def float32_half_step_lost(answer) -> None:
    """The smallest power of two P with float32(P + 0.5) == float32(P)."""
    if _open(answer):
        return
    truth = next(2.0**k for k in range(64) if np.float32(2.0**k + 0.5) == np.float32(2.0**k))
    _right(_close(answer, truth, 0.0), "float32 has 24 bits of mantissa: at 2^k the spacing between numbers is 2^(k-23).")


def rope_rotation(answer, head_dim: int, theta: float) -> None:
    """Your rotate(v, position): RoPE on one head's vector v (head_dim,) at a real position, the
    split-half layout (pair i is channels i and i + head_dim / 2). Checked against contgpt's own
    rotary and apply_rotary on vectors and fractional positions drawn here, and on the property
    that makes it a relative encoding: the score of two rotated vectors depends on t - s only."""
    if _open(answer):
        return
    hint = (
        "Pair i turns by position * theta^(-2i/head_dim): (v_i cos - v_(i+h) sin, v_(i+h) cos + v_i sin), "
        "h = head_dim / 2; the first half of the result holds the first channels of the pairs."
    )
    g = torch.Generator().manual_seed(0)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    cases = []
    for position in (0.0, 0.5, 2.5, 7.75):
        v = torch.randn(head_dim, generator=g)
        cos, sin = contgpt.rotary(torch.tensor([[position]]), inv_freq)
        cases.append(((v.clone(), position), contgpt.apply_rotary(v[None, None, None, :], cos, sin)[0, 0, 0]))
    if not _agrees_on(answer, hint, cases, 1e-5):
        _right(False, hint)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    scores = [float(_call(answer, hint, q, t) @ _call(answer, hint, k, t - 1.5)) for t in (1.5, 4.0, 9.25)]
    _right(max(scores) - min(scores) < 1e-4 * max(1.0, abs(scores[0])), hint)


# ----------------------------------------------------------------------------- 3: attention as an integral


def keys_under_rule(answer, positions, durations, rule: str) -> None:
    """Where each key sits in its interval (t - d, t] under a quadrature rule."""
    if _open(answer):
        return
    truth = contgpt.key_positions(torch.as_tensor(positions, dtype=torch.float64), torch.as_tensor(durations, dtype=torch.float64), rule)
    _right(_close(answer, truth, 1e-6), "The right rule puts a key at t, the left at t - d, the midpoint halfway.")


def _same_split(got, truth) -> bool:
    return isinstance(got, (tuple, list)) and len(got) == 3 and all(_close(a, t, 1e-6) for a, t in zip(got, truth, strict=True))


def refinement(answer, model, tokens) -> None:
    """Your split(positions, durations, m) -> (index, positions, durations): every token becomes m
    copies of duration d / m tiling its interval (t - d, t]; index says which token each copy
    repeats. Checked against ex.refine on timelines drawn here, then on the real model: the
    prompt refined both ways must give the same logits."""
    if _open(answer):
        return
    g = torch.Generator().manual_seed(0)
    durations = 0.25 + torch.rand(6, generator=g) * 2
    gaps = torch.rand(6, generator=g)  # a timeline with gaps between the tokens
    positions = (durations + gaps).cumsum(0)
    cases = [(positions, durations, m) for m in (1, 2, 3, 5)] + [(torch.tensor([3.0]), torch.tensor([2.0]), 4)]
    hint = "Copy k of m (k = 0..m-1) of a token (t, d) ends at t - d + (k + 1) d / m and lasts d / m; index repeats j m times."
    splits = [_call(answer, hint, p.clone(), d.clone(), m) for p, d, m in cases]
    if not all(_same_split(got, ex.refine(p, d, m)) for got, (p, d, m) in zip(splits, cases, strict=True)):
        _right(False, hint)
    T = len(tokens)
    ordinary = torch.arange(T, dtype=torch.float32), torch.ones(T)
    with torch.no_grad():
        index, pos, dur = _call(answer, hint, *ordinary, 3)
        mine = model(torch.as_tensor(tokens)[torch.as_tensor(index).long()], positions=pos, durations=dur)[0, -1]
        index, pos, dur = ex.refine(*ordinary, 3)
        truth = model(torch.as_tensor(tokens)[index], positions=pos, durations=dur)[0, -1]
    # the two splits agree to float32 rounding of the positions (one ulp), which moves logits of size
    # 20 by a few of their ulps (measured 1e-5): compare the next-token distributions instead
    distance = 0.5 * (mine.softmax(-1) - truth.softmax(-1)).abs().sum().item()  # total variation
    _right(distance < 1e-5, hint)


# ----------------------------------------------------------------------------- 4: four apples, three apples


def observed_area(answer, probs, n: int) -> None:
    """The area under the observed completeness curve |F_tau n E| / n over the paper's thresholds
    tau = 0, 0.01, ..., 1 (trapezoid rule), F_tau = digits k with max_c p_k(c) >= tau, E = {1..n}:
    paper.py's own metric, computed here."""
    if _open(answer):
        return
    truth = paper.area(paper.counting_metrics(probs, n)["completeness"])
    _right(
        _close(answer, truth, 1e-6),
        "For each tau in torch.linspace(0, 1, 101): keep the digits 1..n whose highest probability over c "
        "reaches tau (>=), divide their count by n; then the trapezoid area over tau.",
    )


def trapezoid_area(answer, xs, ys) -> None:
    """The area under the curve (xs, ys) by the trapezoid rule."""
    if _open(answer):
        return
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    truth = float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())
    _right(_close(answer, truth, 1e-9), "Sum (y_i + y_(i+1)) / 2 times (x_(i+1) - x_i): the mean of the samples is not the same.")


# ----------------------------------------------------------------------------- 5: looking inside


def attention_mass(answer, model, inputs: dict, layer: int, span) -> None:
    """The share of the last query's attention, averaged over heads, that lands on the tokens of
    `span` in `layer`, for the run with these inputs: computed here through the model's own hook."""
    if _open(answer):
        return
    weights = _hooked(model.model.layers[layer].self_attn.probs, lambda: model(**inputs))
    truth = float(weights[0, :, :, -1].double().mean((0, 1))[list(span)].sum())
    _right(
        _close(answer, truth, 1e-6),
        "Hook self_attn.probs of that layer (B, Hkv, rep, T, S), take the last query, average over every "
        "head, and sum the weights on the span's keys.",
    )


def logit_lens(answer, model, inputs: dict) -> None:
    """The logit lens at the last position for the run with these inputs: (n_layers, vocab)
    logits, against lens.logit_lens computed here (float32: equal to about 1e-4)."""
    if _open(answer):
        return
    truth = lens.logit_lens(model, **inputs)[:, 0]  # (L, vocab): the last position of the one example
    _right(
        _close(answer, truth, 1e-4),
        "Hook every block's resid_out, keep the last position, and send it through model.model.norm and "
        "model.head (model.logits does both); the last layer's row must equal the model's own logits.",
    )


def patched(answer, model, source: dict, target: dict, layer: int) -> None:
    """The last token's logits (vocab,) of the target run with the residual stream after `layer`
    (resid_out, every position) replaced by the source run's, against lens.patch here."""
    if _open(answer):
        return
    truth = lens.patch(model, source=source, target=target, layers=[layer])[0, -1]
    _right(
        _close(answer, truth, 1e-4),
        "Record the source run's resid_out of that layer with one hook, then run the target with a hook on the "
        "same point that returns the recorded tensor (a forward hook's return value replaces the output).",
    )


def first_layer_on_top(answer, lens_probs, digit: int) -> None:
    """The first layer whose lens puts `digit` above every other digit (lens_probs: (layers, 10))."""
    if _open(answer):
        return
    top = torch.as_tensor(lens_probs).argmax(1)
    hits = (top == digit).nonzero()
    truth = int(hits[0]) if len(hits) else None
    _right(answer == truth, "Go through the layers in order and find the first whose most likely digit is the one asked for.")


# ----------------------------------------------------------------------------- 6: merging tokens


def proportional_attention(answer) -> None:
    """Your weights(scores, sizes) -> softmax with ToMe's proportional attention, for one query
    (scores (S,), sizes (S,) positive integers): checked against the softmax over the unmerged
    keys, each key written out `size` times, on scores and sizes drawn here."""
    if _open(answer):
        return
    hint = "A key standing for s copies has s times the weight of one copy: add log(size) to its score before the softmax."
    g = torch.Generator().manual_seed(0)
    cases = []
    for S in (1, 4, 9):
        scores = torch.randn(S, generator=g, dtype=torch.float64) * 3
        counts = torch.randint(1, 6, (S,), generator=g)
        unmerged = scores.repeat_interleave(counts).softmax(-1)  # every copy of key j has key j's score
        truth = torch.stack([part.sum() for part in unmerged.split(counts.tolist())])  # the copies' total per key
        cases.append(((scores.clone(), counts.double()), truth))
    # weights are at most 1: 1e-6 accepts an answer computed in float32 as well as float64
    _right(_agrees_on(answer, hint, cases, 1e-6), hint)


def peak_duration(answer, durations, probs, digit: int) -> None:
    """The swept duration at which `digit`'s probability is highest (durations (N,), probs (N, 10))."""
    if _open(answer):
        return
    truth = float(torch.as_tensor(durations)[torch.as_tensor(probs)[:, digit].argmax()])
    _right(_close(answer, truth, 1e-6), f"Find the row of the sweep where column {digit} is largest and read its duration.")


# ----------------------------------------------------------------------------- 7: continuity in space


def slerp(answer) -> None:
    """Your slerp(a, b, alpha) for two vectors (D,): the directions turned along the great circle
    by the fraction alpha, the norm interpolated linearly. Checked against ex.interpolate on
    vectors and alphas drawn here."""
    if _open(answer):
        return
    hint = (
        "Normalise both, omega = arccos(ua . ub), direction = (sin((1 - alpha) omega) ua + sin(alpha omega) ub) / sin omega, "
        "times the linearly interpolated norm (1 - alpha) |a| + alpha |b|."
    )
    g = torch.Generator().manual_seed(0)
    cases = []
    for D in (2, 16):
        a, b = torch.randn(D, generator=g, dtype=torch.float64), 3 * torch.randn(D, generator=g, dtype=torch.float64)
        for alpha in (0.0, 0.3, 0.5, 1.0):  # float64 vectors: ex.interpolate computes in float64
            cases.append(((a.clone(), b.clone(), alpha), ex.interpolate(a, b, [alpha], "slerp")[0]))
    _right(_agrees_on(answer, hint, cases, 1e-6), hint)


def lipschitz(answer) -> None:
    """Your normalized_lipschitz(x, y): max |dy/dx| between neighbouring samples, times the x
    range, over the y range. Checked against experiments.normalized_lipschitz on curves here."""
    if _open(answer):
        return
    hint = "The largest |y[i+1] - y[i]| / (x[i+1] - x[i]), multiplied by (x[-1] - x[0]) and divided by (max y - min y)."
    x = torch.linspace(0, 1, 41, dtype=torch.float64)
    curves = (2 * x + 1, x**2, torch.sigmoid(20 * (x - 0.6)), torch.cos(6 * x), 0.3 * (x > 0.5).double())
    _right(_agrees_on(answer, hint, [((x.clone(), y.clone()), ex.normalized_lipschitz(x, y)) for y in curves], 1e-9), hint)


def halfway(answer, model, tokenizer, template: str, a: str, b: str, word: str) -> None:
    """The probability of the token `word` at the last position when the slot holds the embedding
    halfway (linear, alpha 0.5) between a's and b's: computed here through experiments.word_swap."""
    if _open(answer):
        return
    with torch.no_grad():
        swap = ex.word_swap(model, tokenizer, template, a, b)
        probs = model(embeds=swap.embeds([0.5]), durations=swap.durations)[0, -1].softmax(-1)
    (token,) = tokenizer.encode(word, bos=False)  # one token: its probability, not every token spelling the word
    truth = float(probs[token])
    _right(
        _close(answer, truth, 1e-5),
        "Take the two words' rows of the embedding table (model.embed), mix them 0.5 / 0.5, put the mixed row in "
        "the prompt's embeddings (model.embed of the prompt) and run model(embeds=...).",
    )


# ----------------------------------------------------------------------------- 8: the transformer as an equation


def step_sizes(answer, model, tokens) -> None:
    """Each layer's relative step |x_(l+1) - x_l| / |x_l| at the last position (n_layers,), from
    the residual stream entering and leaving every block, computed here with lens.residuals."""
    if _open(answer):
        return
    x_in = lens.residuals(model, tokens, point="resid_in")[:, 0, -1]  # (L, dim)
    x_out = lens.residuals(model, tokens, point="resid_out")[:, 0, -1]
    truth = (x_out - x_in).norm(dim=-1) / x_in.norm(dim=-1)
    _right(_close(answer, truth, 1e-4), "Hook resid_in and resid_out of every block; the step is out - in, divided by |in|, at the last token.")


def rectangle_rule(answer) -> None:
    """Your rectangle(f, a, b, m, rule): the integral of f over [a, b] from m equal cells, each
    sampled once at its right end, left end or midpoint and weighted by its width. Checked
    against the same rule computed here, on functions and grids drawn here."""
    if _open(answer):
        return
    hint = "Cells of width h = (b - a) / m; cell k spans [a + k h, a + (k + 1) h]; sample f there (right: its end) and sum f times h."
    where = {"left": 0.0, "midpoint": 0.5, "right": 1.0}
    for f, a, b in ((torch.exp, 0.0, 1.0), (torch.cos, -1.0, 2.5), (lambda t: t**3, 0.5, 2.0)):
        for m in (1, 3, 8):
            for rule, at in where.items():
                h = (b - a) / m
                truth = float(sum(f(torch.tensor(a + (k + at) * h, dtype=torch.float64)) for k in range(m)) * h)
                if not _close(_call(answer, hint, f, a, b, m, rule), truth, 1e-9):
                    _right(False, f"{hint} (wrong for the {rule} rule, m = {m})")
    _right(True, hint)
