"""Checkers for the tutorials' exercises: each compares your answer with the truth, computed here
(or by contgpt's own function) from the same inputs, and says what is wrong (with a hint) or
that it is right. Import it after putting the checkout on sys.path, as the notebooks do.

An exercise cell starts with `answer = ...`; left like that, its checker only says that the
exercise is open (so a notebook still runs top to bottom). Any other answer is checked, and a
wrong one raises AssertionError. The solutions are at the end of each notebook.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import contgpt
import experiments as ex

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
    _right(_close(answer, truth, 1e-6 * max(1.0, truth)),
           "Solve d w / (d w + 1 - w) = target for d: the other keys keep their total 1 - w.")  # fmt: skip


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


def layer0_attention(answer, model, tokens, positions, durations) -> None:
    """Layer 0's attention output (T, dim) for this timeline, against the model's own, which the
    checker catches itself (float32: equal to about 1e-4)."""
    if _open(answer):
        return
    out = _hooked(model.model.layers[0].self_attn, lambda: model(tokens, positions=positions, durations=durations))
    _right(_close(answer, out[0], 1e-4),
           "Compare shapes first; give attention_by_hand the same positions and durations as the model "
           "(log d is added to every visible key's score, before the softmax).")  # fmt: skip


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


# ----------------------------------------------------------------------------- 3: attention as an integral


def key_positions(answer, positions, durations, rule: str) -> None:
    """Where each key sits in its interval (t - d, t] under a quadrature rule."""
    if _open(answer):
        return
    truth = contgpt.key_positions(torch.as_tensor(positions, dtype=torch.float64), torch.as_tensor(durations, dtype=torch.float64), rule)
    _right(_close(answer, truth, 1e-6), "The right rule puts a key at t, the left at t - d, the midpoint halfway.")


def refined(answer, position: float, duration: float, m: int) -> None:
    """The (positions, durations) of m copies that split one token evenly."""
    if _open(answer):
        return
    truth = ex.refine(torch.tensor([position]), torch.tensor([duration]), m)[1:]  # (positions, durations)
    ok = isinstance(answer, (tuple, list)) and len(answer) == 2 and all(_close(a, t, 1e-6) for a, t in zip(answer, truth, strict=True))
    _right(ok, "Copy k of m ends at t - d + (k + 1) d / m and lasts d / m; together they cover (t - d, t].")


# ----------------------------------------------------------------------------- 4: four apples, three apples


def completeness(answer, probs, n: int, tau: float) -> None:
    """Observed completeness |F n E| / n at threshold tau, F = digits k with max_c p_k(c) >= tau, E = {1..n}."""
    if _open(answer):
        return
    peak = torch.as_tensor(probs, dtype=torch.float64).max(0).values
    truth = sum(1 for k in range(1, n + 1) if peak[k] >= tau) / n
    _right(_close(answer, truth, 1e-9), "Take each digit's highest probability over c, keep the digits 1..n that reach tau, divide by n.")


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
    _right(_close(answer, truth, 1e-6),
           "Hook self_attn.probs of that layer (B, Hkv, rep, T, S), take the last query, average over every "
           "head, and sum the weights on the span's keys.")  # fmt: skip


def first_layer_on_top(answer, lens_probs, digit: int) -> None:
    """The first layer whose lens puts `digit` above every other digit (lens_probs: (layers, 10))."""
    if _open(answer):
        return
    top = torch.as_tensor(lens_probs).argmax(1)
    hits = (top == digit).nonzero()
    truth = int(hits[0]) if len(hits) else None
    _right(answer == truth, "Go through the layers in order and find the first whose most likely digit is the one asked for.")


# ----------------------------------------------------------------------------- 6: merging tokens


def merge_bias(answer, size: int) -> None:
    """The score bias of a token that stands for `size` merged tokens (ToMe's proportional attention)."""
    if _open(answer):
        return
    _right(_close(answer, math.log(size), 1e-9), "Proportional attention multiplies a merged token's exp(score) by its size.")


def merged_durations(answer, n_tokens: int, merged_at: int, size: int) -> None:
    """Durations for a prompt of n_tokens where token `merged_at` stands for `size` tokens."""
    if _open(answer):
        return
    truth = torch.ones(n_tokens)
    truth[merged_at] = size
    _right(_close(answer, truth, 1e-9), "Every token lasts 1 except the merged one, which lasts as long as the tokens it replaces.")
