"""The paper's experiments as a toolkit: spans, timelines, tracked answers, interpolation,
metrics and plots (the demos' command-line plumbing is demos/cli.py).

Conventions: a sweep has N points; a timeline is (positions, durations), each (N, T); curves are
next-token probabilities at the last position, one per tracked answer, plus "other" (the mass
on every untracked token).
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field

import torch

from sweep import last_logits

# ----------------------------------------------------------------------------- spans


def word_ranges(text: str, word: str) -> list[tuple[int, int]]:
    """Character ranges of `word` as a whole word in text ("and" is not found in "Alexander")."""
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text)]


def covering_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose characters overlap [start, end): exactly the tokens that cover
    the range, a word split over several tokens included, a neighbour that only touches it not."""
    if not 0 <= start < end:
        raise ValueError(f"empty or negative character range [{start}, {end})")
    found = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    if not found:
        raise ValueError(f"no token covers characters [{start}, {end})")
    return found


def span_of(tokenizer, text: str, ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(token ids of text, sorted indices of the tokens covering any of the character ranges)."""
    ids, offsets = tokenizer.encode_with_offsets(text)
    return ids, sorted({i for a, b in ranges for i in covering_tokens(offsets, a, b)})


# ----------------------------------------------------------------------------- timelines


def shrink(T: int, span: list[int], factors) -> tuple[torch.Tensor, torch.Tensor]:
    """The span's tokens last c each; tokens before it keep their positions and tokens after it
    move so that every other duration stays 1. (N, T) positions and durations, N = len(factors)."""
    factors = torch.as_tensor(factors, dtype=torch.float32)
    durations = torch.ones(len(factors), T)
    durations[:, span] = factors[:, None]
    return durations.cumsum(1) - 1, durations


def shift(T: int, taus) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position moved by tau; durations 1."""
    taus = torch.as_tensor(taus, dtype=torch.float32)
    return torch.arange(T, dtype=torch.float32) + taus[:, None], torch.ones(len(taus), T)


def scale(T: int, factors) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position multiplied by s; durations stay 1 (a common duration factor changes
    nothing anyway, by duration-scale invariance)."""
    factors = torch.as_tensor(factors, dtype=torch.float32)
    return torch.arange(T, dtype=torch.float32) * factors[:, None], torch.ones(len(factors), T)


def refine(positions, durations, m: int, which=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split tokens into m copies of duration d/m that tile each token's interval (t - d, t].

    which: the token indices to split (default all). Returns (index, positions, durations) of
    the refined sequence, index[k] being the original token of piece k (use tokens[index] or
    embeds[index])."""
    positions, durations = torch.as_tensor(positions, dtype=torch.float32), torch.as_tensor(durations, dtype=torch.float32)
    T = len(positions)
    split = set(range(T) if which is None else which)
    index, pos, dur = [], [], []
    for j in range(T):
        pieces = m if j in split else 1
        for k in range(1, pieces + 1):
            index.append(j)
            pos.append(positions[j] - durations[j] + k * durations[j] / pieces)
            dur.append(durations[j] / pieces)
    return torch.tensor(index), torch.stack(pos), torch.stack(dur)


# ----------------------------------------------------------------------------- interpolation


def interpolate(a: torch.Tensor, b: torch.Tensor, alphas, method: str = "linear") -> torch.Tensor:
    """(N, *a.shape): a + alpha (b - a), or for "slerp" the spherical interpolation of the
    directions with the norm interpolated linearly (vectors on the last axis)."""
    alphas = torch.as_tensor(alphas, dtype=torch.float32).to(a.device)
    w = alphas.reshape(-1, *([1] * a.dim()))
    if method == "linear":
        return (1 - w) * a + w * b
    if method != "slerp":
        raise ValueError(f"unknown interpolation {method!r}; choose linear or slerp")
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na, b / nb
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1, 1)
    if (cos <= -1 + 1e-6).any():  # (within 0.1 degrees of) opposite: every great circle joins them
        raise ValueError("slerp is undefined between opposite directions (a row of b is a negative multiple of a's); use linear")
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6  # same direction: slerp degenerates to lerp
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    direction = torch.where(parallel, (1 - w) * ua + w * ub, (torch.sin((1 - w) * omega) * ua + torch.sin(w * omega) * ub) / safe)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return ((1 - w) * na + w * nb) * direction


def align(rows_a: torch.Tensor, rows_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two words of ka and kb tokens on one unit of time: word a's tokens last 1/ka each, b's
    1/kb; cutting at every boundary of either gives segments where both words hold one token.
    Returns (segments of a (n, D), segments of b (n, D), durations (n,)) with durations summing
    to 1. Words of one token each give one segment of duration 1: the discrete prompt."""
    ka, kb = len(rows_a), len(rows_b)
    cuts = sorted({i / ka for i in range(ka + 1)} | {j / kb for j in range(kb + 1)})
    seg_a, seg_b, durations = [], [], []
    for left, right in zip(cuts, cuts[1:]):
        middle = (left + right) / 2
        seg_a.append(rows_a[int(middle * ka)])
        seg_b.append(rows_b[int(middle * kb)])
        durations.append(right - left)
    return torch.stack(seg_a), torch.stack(seg_b), torch.tensor(durations)


@dataclass
class WordSwap:
    """A prompt with one word slot filled by a and by b, ready for interpolation: embeddings of
    the shared context, the aligned segments of both words, and the timeline."""

    left: torch.Tensor  # (L, D) rows before the word
    seg_a: torch.Tensor  # (n, D)
    seg_b: torch.Tensor  # (n, D)
    right: torch.Tensor  # (R, D) rows after the word
    durations: torch.Tensor  # (L + n + R,)

    def embeds(self, alphas, method="linear") -> torch.Tensor:
        """(N, T, D) for N interpolation points."""
        mixed = interpolate(self.seg_a, self.seg_b, alphas, method)
        N = mixed.shape[0]
        expand = lambda x: x.expand(N, *x.shape)
        return torch.cat((expand(self.left), mixed, expand(self.right)), dim=1)


def word_swap(model, tokenizer, template: str, a: str, b: str) -> WordSwap:
    """Fill `template`'s "{}" with a and with b, and keep apart the tokens where the two prompts
    differ: the words' tokens (with any space or punctuation the tokenizer glues to them). The
    tokens before and after are the shared context."""
    if _fields(template) != [""]:
        raise ValueError(f"the template needs exactly one {{}} for the word (write other braces as {{{{ and }}}}): {template!r}")
    ids_a, ids_b = tokenizer.encode(template.format(a)), tokenizer.encode(template.format(b))
    left = 0
    while left < min(len(ids_a), len(ids_b)) and ids_a[left] == ids_b[left]:
        left += 1
    right = 0
    while right < min(len(ids_a), len(ids_b)) - left and ids_a[-1 - right] == ids_b[-1 - right]:
        right += 1
    word_a, word_b = ids_a[left : len(ids_a) - right], ids_b[left : len(ids_b) - right]
    if not word_a or not word_b:  # a segment of one word would face nothing of the other's
        why = "give the same tokens" if word_a == word_b else f"differ only by tokens that {a if not word_a else b!r} lacks"
        raise ValueError(f"{a!r} and {b!r} {why} in {template!r}: nothing to interpolate between")

    def rows(ids):
        return model.embed(torch.tensor(ids, dtype=torch.long)) if ids else torch.zeros(0, model.config.dim)

    seg_a, seg_b, dur = align(rows(word_a), rows(word_b))
    durations = torch.cat((torch.ones(left), dur, torch.ones(right)))
    return WordSwap(rows(ids_a[:left]), seg_a, seg_b, rows(ids_a[len(ids_a) - right :]), durations)


def _fields(template: str) -> list[str] | None:
    """The replacement fields of a str.format template ("{}" is ""), or None when its braces do
    not parse. Escaped braces ("{{", "}}") are text, not fields."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return None


# ----------------------------------------------------------------------------- answers and sweeps


@dataclass
class Curves:
    """Probabilities of tracked answers along a swept factor, and the untracked rest."""

    x: list[float]
    xlabel: str
    answers: list[str]
    probs: torch.Tensor  # (N, A)
    other: torch.Tensor  # (N,)
    meta: dict = field(default_factory=dict)

    def top(self) -> list[str]:
        """The tracked answer with the highest probability at each point."""
        return [self.answers[i] for i in self.probs.argmax(1).tolist()]

    def runs(self) -> list[tuple[str, float, float]]:
        """(answer, first x, last x) for each stretch where the same answer is on top."""
        out = []
        for x, answer in zip(self.x, self.top()):
            if out and out[-1][0] == answer:
                out[-1] = (answer, out[-1][1], x)
            else:
                out.append((answer, x, x))
        return out

    def to_dict(self) -> dict:
        return {
            "xlabel": self.xlabel,
            "x": self.x,
            "answers": self.answers,
            "probs": self.probs.tolist(),
            "other": self.other.tolist(),
            "top": self.top(),
            **self.meta,
        }


def answer_probs(logits: torch.Tensor, tokenizer, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (N, A), other (N,)) from last-position logits (N, V): each answer's probability
    sums every token that decodes exactly to it (whitespace stripped); "yes|Yes" names exact
    alternatives, summed together. other is the mass on every token no answer tracks: answers
    may overlap ("no" and "no|No"), and a token shared by two is counted once there."""
    p = logits.float().softmax(-1)
    columns, tracked = [], set()
    for answer in answers:
        ids = sorted({i for text in answer.split("|") for i in tokenizer.ids_for(text)})
        if not ids:
            raise ValueError(f"no token of this vocabulary decodes to {answer!r}")
        columns.append(p[:, ids].sum(-1))
        tracked.update(ids)
    probs = torch.stack(columns, dim=1)
    return probs, 1 - p[:, sorted(tracked)].sum(-1)


def answer_curves(model, tokenizer, answers, x, xlabel, progress=True, meta=None, **inputs) -> Curves:
    """Run a batched sweep (sweep.last_logits) and track answers along it: a Curves over x."""
    logits = last_logits(model, progress=progress, **inputs)
    probs, other = answer_probs(logits, tokenizer, answers)
    return Curves([float(v) for v in x], xlabel, list(answers), probs, other, meta or {})


DIGITS = [str(d) for d in range(10)]


def digit_sweep(model, tokenizer, ids: list[int], span: list[int], samples: int, meta: dict) -> Curves:
    """The span shrunk to c for c in linspace(0.1, 1, samples), the digits 0-9 tracked."""
    cs = torch.linspace(0.1, 1.0, samples)
    positions, durations = shrink(len(ids), span, cs)
    return answer_curves(
        model, tokenizer, DIGITS, cs, "duration c", tokens=torch.tensor(ids), positions=positions, durations=durations, meta={"span": span, **meta}
    )


# ----------------------------------------------------------------------------- metrics


def variation(y) -> float:
    """How far a curve leaves the range of its two endpoint values (0: it stays between them)."""
    y = torch.as_tensor(y, dtype=torch.float64)
    low, high = min(y[0], y[-1]), max(y[0], y[-1])
    return float(max((y - high).max(), (low - y).max(), torch.tensor(0.0)))


def normalized_lipschitz(x, y) -> float:
    """max |dy/dx| over neighbouring samples, divided by (max y - min y) and multiplied by the
    x range: 1 for a straight line, more for a curve that rises or falls faster somewhere.
    NaN for a flat curve, where it is 0/0."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    spread = y.max() - y.min()
    if spread == 0:
        return math.nan
    slope = ((y[1:] - y[:-1]) / (x[1:] - x[:-1])).abs().max()
    return float(slope * (x[-1] - x[0]) / spread)


# ----------------------------------------------------------------------------- answers


def tracked_above(logits: torch.Tensor, tokenizer, threshold: float = 0.05) -> list[str]:
    """Answers (stripped token texts) whose probability reaches `threshold` at some point."""
    p = logits.float().softmax(-1).max(dim=0).values
    texts = [tokenizer.decode([i]).strip() for i in (p >= threshold).nonzero()[:, 0].tolist()]
    return list(dict.fromkeys(t for t in texts if t))
