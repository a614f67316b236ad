"""Translation in time: every position moved by tau. RoPE sees only differences of positions,
so the model's answer must not move at all: flat curves (up to float32 rounding).

Tracked answers: every token that reaches probability 0.05 somewhere along the sweep.
Compare demos/scale.py, where stretching time does change the answer.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from demos.cli import demo_parser, load_for_demo, report
from experiments import Curves, answer_probs, shift, tracked_above
from sweep import last_logits


def run(args, name, xlabel, factors, timeline, title):
    """Shared by translate.py and scale.py: sweep a whole-prompt timeline, track what matters."""
    started = time.perf_counter()
    model, tokenizer = load_for_demo(args)
    ids = tokenizer.encode(args.prompt)
    positions, durations = timeline(len(ids), factors)
    logits = last_logits(model, torch.tensor(ids), positions=positions, durations=durations, progress=True)
    answers = tracked_above(logits, tokenizer, args.threshold)
    probs, other = answer_probs(logits, tokenizer, answers)
    spread = (probs.max(0).values - probs.min(0).values).max().item()
    curves = Curves(factors.tolist(), xlabel, answers, probs, other, {"prompt": args.prompt, "model": args.model, "max_change": spread})
    print(f"prompt: {args.prompt!r}; tracked: {answers}")
    report(curves, args.out, name, title, started)
    print(f"largest change of any tracked probability along the sweep: {spread:.2e}")
    return curves


def parser(doc, samples=100):
    p = demo_parser(doc, samples)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--threshold", type=float, default=0.05, help="track tokens that reach this probability")
    return p


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    taus = torch.linspace(0.0, 10.0, args.samples)
    run(args, "translate", "shift tau", taus, shift, f"every position + tau ({args.model})")


if __name__ == "__main__":
    main()
