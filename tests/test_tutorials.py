"""The tutorial notebooks (tutorials/): each runs top to bottom on the default model (slow tier),
each exercise checker rejects wrong answers and accepts the right one, and the stored notebooks
are what a run leaves (in order, no errors, the solutions right) and small (quick tier)."""

import base64
import importlib.util
import os
import re
import sys
import time

import nbformat
import numpy as np
import pytest
import torch

import lens
import paper
from conftest import CACHE, ROOT, fetch_or_skip

TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
sys.path.insert(0, str(TUTORIALS))
import checks  # noqa: E402

spec = importlib.util.spec_from_file_location("tutorials_run", TUTORIALS / "run.py")
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)


def test_there_are_eight_notebooks_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


# ----------------------------------------------------------------------------- the checkers


def tiny_model():
    """A small random Qwen2-style model: the checkers that run a model take it in the tests."""
    from contgpt import Config, Transformer

    cfg = Config(family="qwen2", vocab_size=50, dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def caught(module, call):
    """What module's forward returned during call()."""
    seen = []
    hook = module.register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        call()
    hook.remove()
    return seen[0]


tiny = tiny_model()
ids = torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(1))
shrunk = torch.ones(9)
shrunk[2:5] = 0.5
contiguous = shrunk.cumsum(0) - 1
attn0, arange9 = tiny.model.layers[0].self_attn, torch.arange(9.0)
layer0 = {
    name: caught(attn0, lambda: tiny(ids, positions=pos, durations=dur, rule=rule))[0]
    for name, pos, dur, rule in (
        ("right", contiguous, shrunk, "right"),
        ("unit", arange9, torch.ones(9), "right"),
        ("kept", arange9, shrunk, "right"),
        ("left", contiguous, shrunk, "left"),
    )
}
run_shrunk, run_unit = dict(tokens=ids, positions=contiguous, durations=shrunk), dict(tokens=ids)


def mass(run, layer, heads=slice(None)):
    weights = caught(tiny.model.layers[layer].self_attn.probs, lambda: tiny(**run))  # (1, Hkv, rep, T, S)
    return float(weights[0, :, :, -1].reshape(4, -1)[heads].mean(0)[2:5].sum())  # the last query, mean over heads


w = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
d2 = torch.tensor([1.0, 1, 1, 2, 1, 1])
theta = 1e6
probs = torch.tensor([[0.0, 0.5, 0.25, 0.1, 0.15, 0, 0, 0, 0, 0], [0.0, 0.1, 0.2, 0.25, 0.24, 0.21, 0, 0, 0, 0]])
xs, ys = [0, 0.1, 0.5, 1.0], [1.0, 0.8, 0.5, 0.0]
lensed = torch.tensor([[0.5, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0], [0.1, 0.2, 0.6, 0, 0, 0, 0, 0, 0, 0], [0.0, 0.0, 0.9, 0, 0, 0, 0, 0, 0, 0]])


def rope_by_hand(v, position, head_dim=64, theta=1e6, sign=1.0, interleaved=False, step=2):
    """RoPE written out independently, and with the slips a student could make: the interleaved
    layout (pairs 2i, 2i + 1), the angle's sign, the frequencies' exponent."""
    f = theta ** (-torch.arange(0, head_dim, step, dtype=torch.float64)[: head_dim // 2] / head_dim)
    c, s = torch.cos(sign * position * f), torch.sin(sign * position * f)
    v = v.double()
    if interleaved:
        a, b = v[0::2], v[1::2]
        return torch.stack((a * c - b * s, b * c + a * s), -1).flatten()
    a, b = v[: head_dim // 2], v[head_dim // 2 :]
    return torch.cat((a * c - b * s, b * c + a * s))


def split_by_hand(positions, durations, m):
    """The refinement written out independently of ex.refine: copy k of token j ends at
    t_j - d_j + (k + 1) d_j / m."""
    k = torch.arange(1, m + 1, dtype=torch.float32)
    ends = positions[:, None] - durations[:, None] + k * (durations[:, None] / m)  # (T, m)
    return torch.arange(len(positions)).repeat_interleave(m), ends.flatten(), (durations / m).repeat_interleave(m)


def split_from_t(positions, durations, m):  # a plausible slip: the copies start at t instead of ending there
    index, pos, dur = split_by_hand(positions, durations, m)
    return index, pos + durations.repeat_interleave(m), dur


def slerp_by_hand(a, b, alpha):
    ua, ub = a / a.norm(), b / b.norm()
    omega = torch.arccos((ua @ ub).clamp(-1, 1))
    if omega < 1e-9:
        return (1 - alpha) * a + alpha * b
    direction = (torch.sin((1 - alpha) * omega) * ua + torch.sin(alpha * omega) * ub) / torch.sin(omega)
    return ((1 - alpha) * a.norm() + alpha * b.norm()) * direction


def lipschitz_by_hand(x, y):
    return max(abs((y[i + 1] - y[i]) / (x[i + 1] - x[i])) for i in range(len(x) - 1)) * (x[-1] - x[0]) / (max(y) - min(y))


def rectangle_by_hand(f, a, b, m, rule):
    h = (b - a) / m
    offset = {"left": 0.0, "midpoint": 0.5, "right": 1.0}[rule]
    return sum(float(f(torch.tensor(a + (k + offset) * h, dtype=torch.float64))) * h for k in range(m))


class WordTokenizer:
    """Words to ids for the tiny model: enough of a tokenizer for word_swap and answer_probs."""

    words = "the capital of France Germany is Paris Berlin".split()

    def encode(self, text, bos=True):
        return [self.words.index(w) for w in text.split()]

    def ids_for(self, text):
        return [self.words.index(text.strip())] if text.strip() in self.words else []


def halfway_by_hand(model, a, b):
    rows = model.embed(torch.tensor(WordTokenizer().encode(f"the capital of {a} is")))
    rows[3] = 0.5 * (rows[3] + model.embed(torch.tensor(WordTokenizer.words.index(b))))
    with torch.no_grad():
        return float(model(embeds=rows[None])[0, -1].softmax(-1)[WordTokenizer.words.index("Paris")])


def lens_by_hand(model, run, position=-1):
    stream = torch.stack([caught(block.resid_out, lambda: model(**run))[0, position] for block in model.model.layers])
    with torch.no_grad():
        return model.logits(stream)


def steps_by_hand(model, tokens, scale=True):
    ins = torch.stack([caught(block.resid_in, lambda: model(tokens))[0, -1] for block in model.model.layers])
    outs = torch.stack([caught(block.resid_out, lambda: model(tokens))[0, -1] for block in model.model.layers])
    return (outs - ins).norm(dim=-1) / (ins.norm(dim=-1) if scale else 1)


ds = torch.linspace(0.5, 8.0, 31)
sweep = torch.zeros(31, 10)
sweep[:, 4] = torch.exp(-((ds - 5.0) ** 2))  # p(4) highest at 5.0 (row 18)
sweep[:, 1] = 1 - sweep[:, 4]
with torch.no_grad():
    patched_1 = lens.patch(tiny, source=run_shrunk, target=run_unit, layers=[1])[0, -1]
    patched_0 = lens.patch(tiny, source=run_shrunk, target=run_unit, layers=[0])[0, -1]
    unpatched = tiny(**run_unit)[0, -1]

CASES = [  # (checker, its inputs, the right answer, wrong answers a student could plausibly give)
    (checks.reweighted, (w, d2), w * d2 / (w * d2).sum(), [w, w * d2]),
    (checks.duration_for_weight, (0.2, 0.5), 4.0, [2.5, 0.25]),
    (
        checks.layer0_attention,
        (tiny, ids, contiguous, shrunk),
        layer0["right"] + 1e-6,
        [layer0["unit"], layer0["kept"], layer0["right"].T],
    ),  # the ordinary run; the positions not shifted
    (
        checks.layer0_attention,
        (tiny, ids, contiguous, shrunk, "left"),
        layer0["left"] + 1e-6,
        [layer0["right"], layer0["unit"]],
    ),  # the keys left where the right rule puts them
    (checks.rotation_angle, (2.5, 5, 64, theta), 2.5 * theta ** (-10 / 64), [2.5 * theta ** (-5 / 64), theta ** (-10 / 64)]),
    (checks.equivalent_key_position, (10.0, 4.5, 0.0), 5.5, [14.5, 4.5]),
    (checks.float32_half_step_lost, (), 2.0**23, [2.0**24, 2.0**22]),
    (
        checks.rope_rotation,
        (64, theta),
        rope_by_hand,
        [
            lambda v, t: rope_by_hand(v, t, interleaved=True),
            lambda v, t: rope_by_hand(v, t, sign=-1.0),
            lambda v, t: rope_by_hand(v, t, step=1),
        ],
    ),
    (
        checks.keys_under_rule,
        (torch.tensor([0.0, 0.5, 2.5]), torch.tensor([1.0, 0.5, 2.0]), "midpoint"),
        torch.tensor([-0.5, 0.25, 1.5]),
        [torch.tensor([-1.0, 0.0, 0.5]), torch.tensor([0.0, 0.5, 2.5])],
    ),
    (
        checks.refinement,
        (tiny, ids),
        split_by_hand,
        [split_from_t, lambda p, d, m: split_by_hand(p, d * m, m), lambda p, d, m: split_by_hand(p, d, 1), 3],
    ),  # not d / m; no split; not a function
    (
        checks.observed_area,
        (probs, 4),
        paper.area(paper.counting_metrics(probs, 4)["completeness"]),
        [paper.area(paper.counting_metrics(probs, 4)["counterfactual"]), 0.75, paper.area(paper.counting_metrics(probs, 3)["completeness"])],
    ),
    (checks.trapezoid_area, (xs, ys), 0.05 * 1.8 + 0.2 * 1.3 + 0.25 * 0.5, [float(np.mean(ys))]),
    (
        checks.attention_mass,
        (tiny, run_shrunk, 1, range(2, 5)),
        mass(run_shrunk, 1),
        [mass(run_shrunk, 0), mass(run_unit, 1), mass(run_shrunk, 1, slice(0, 1))],
    ),  # another layer, the unit run, head 0 only
    (
        checks.logit_lens,
        (tiny, run_shrunk),
        lens_by_hand(tiny, run_shrunk),
        [lens_by_hand(tiny, run_shrunk, -2), lens_by_hand(tiny, run_unit)],
    ),  # another position; the other run
    (checks.patched, (tiny, run_shrunk, run_unit, 1), patched_1, [patched_0, unpatched]),
    (checks.first_layer_on_top, (lensed, 2), 1, [2, 0, None]),
    (
        checks.proportional_attention,
        (),
        lambda s, z: (s + z.double().log()).softmax(-1),
        [lambda s, z: s.softmax(-1), lambda s, z: (s * z).softmax(-1), lambda s, z: (s + z).softmax(-1)],
    ),
    (checks.peak_duration, (ds, sweep, 4), float(ds[18]), [18, float(ds[17]), 4.0]),
    (
        checks.slerp,
        (),
        slerp_by_hand,
        [lambda a, b, t: (1 - t) * a + t * b, lambda a, b, t: slerp_by_hand(a / a.norm(), b / b.norm(), t)],
    ),  # linear; unit norm
    (
        checks.lipschitz,
        (),
        lipschitz_by_hand,
        [lambda x, y: lipschitz_by_hand(x, y) * (max(y) - min(y)), lambda x, y: abs((y[-1] - y[0]) / (x[-1] - x[0]))],
    ),
    (
        checks.halfway,
        (tiny, WordTokenizer(), "the capital of {} is", "France", "Germany", "Paris"),
        halfway_by_hand(tiny, "France", "Germany"),
        [halfway_by_hand(tiny, "France", "France"), halfway_by_hand(tiny, "Germany", "Germany")],
    ),
    (checks.step_sizes, (tiny, ids), steps_by_hand(tiny, ids), [steps_by_hand(tiny, ids, scale=False), steps_by_hand(tiny, ids)[:1]]),
    (
        checks.rectangle_rule,
        (),
        rectangle_by_hand,
        [lambda f, a, b, m, rule: rectangle_by_hand(f, a, b, m, "right"), lambda f, a, b, m, rule: rectangle_by_hand(f, a, b, m, rule) / (b - a)],
    ),
]


@pytest.mark.parametrize("checker, inputs, right, wrongs", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_checker_rejects_wrong_answers_and_accepts_the_right_one(checker, inputs, right, wrongs, capsys):
    call = lambda answer: checker(answer, *inputs)
    call(right)
    assert capsys.readouterr().out.strip() == "right!"
    for wrong in wrongs:
        with pytest.raises(AssertionError, match="not quite"):
            call(wrong)
    call(...)  # an open exercise only says so
    assert capsys.readouterr().out.strip() == checks.OPEN


def test_every_checker_is_exercised_here():
    used = {c[0].__name__ for c in CASES}
    defined = {name for name, f in vars(checks).items() if callable(f) and not name.startswith("_") and f.__module__ == "checks"}
    assert defined == used


# ----------------------------------------------------------------------------- the stored notebooks


def outputs_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_stored_notebook_is_a_whole_run_and_small(path):
    """What tutorials/run.py leaves: every code cell run once, in order, without an error; the
    solutions all "right!"; figures of tens of KB, the whole under 200 KB."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{path.name}: rerun it with python tutorials/run.py"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    solutions = outputs_text(code[-1])
    assert solutions.count("right!") >= 2 and "not quite" not in solutions, solutions
    images = [len(base64.b64decode(o.data["image/png"])) for c in code for o in c.outputs if "data" in o and "image/png" in o.data]
    assert all(size < 60_000 for size in images), images
    assert path.stat().st_size < 200_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_pins_float32(path):
    """Its stored outputs and the numbers its text quotes are float32's, so they hold on every
    CPU: with dtype "auto" a CPU with bf16 instructions would run it in bfloat16."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    loads = re.findall(r"\bload\([^)]*\)", code)
    assert loads and all('dtype="float32"' in call for call in loads), loads


# ----------------------------------------------------------------------------- running them


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_runs_top_to_bottom(path):
    """In a fresh kernel, in tutorials/ as a learner runs it; the run stays in memory (the
    stored notebook is not rewritten)."""
    from load import fetch_model

    os.environ["CONTGPT_CACHE"] = str(CACHE)  # the kernel inherits it
    fetch_or_skip(lambda: fetch_model("qwen2.5-0.5b"))
    started = time.perf_counter()
    nb = run.execute(path)
    seconds = time.perf_counter() - started
    code = [c for c in nb.cells if c.cell_type == "code"]
    solutions = outputs_text(code[-1])
    assert solutions.count("right!") >= 2 and "not quite" not in solutions, solutions
    opened = sum(outputs_text(c).count(checks.OPEN) for c in code)
    assert opened >= 2  # the exercises are left open above the solutions
    print(f"{path.name}: {seconds:.0f} s")
