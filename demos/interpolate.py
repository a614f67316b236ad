"""Embedding interpolation: "Question: Are apples red? (yes/no)" with the word's embedding
moving from "apples" to "bananas", linearly or spherically (slerp of the directions, norms
interpolated linearly). A continuous model answers smoothly in between.

Words of different token counts are aligned on one unit of time: each word's tokens last 1/k.
Printed: each curve's variation (how far it leaves its endpoint range) and normalised
Lipschitz estimate (1 for a straight line).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from demos.cli import demo_parser, load_for_demo, report
from experiments import answer_curves, normalized_lipschitz, variation, word_swap

TEMPLATE = "Question: Are {} red? (yes/no)\nAnswer:"


def main(argv=None):
    parser = demo_parser(__doc__, samples=100)
    parser.add_argument("--a", default="apples")
    parser.add_argument("--b", default="bananas")
    parser.add_argument("--template", default=TEMPLATE, help="a prompt with {} for the word")
    parser.add_argument("--method", choices=["linear", "slerp"], default="linear")
    parser.add_argument("--answers", nargs="+", default=["yes|Yes", "no|No"], help="exact token texts; | joins alternatives")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model, tokenizer = load_for_demo(args)

    swap = word_swap(model, tokenizer, args.template, args.a, args.b)
    alphas = torch.linspace(0.0, 1.0, args.samples)
    print(
        f"prompt: {args.template.format(args.a)!r} -> {args.b!r}; "
        f"the word spans {len(swap.durations) - len(swap.left) - len(swap.right)} aligned segments"
    )
    curves = answer_curves(
        model,
        tokenizer,
        args.answers,
        alphas,
        f"alpha ({args.method})",
        embeds=swap.embeds(alphas, args.method),
        durations=swap.durations,
        meta={"template": args.template, "a": args.a, "b": args.b, "method": args.method, "model": args.model},
    )
    for i, answer in enumerate(curves.answers):
        y = curves.probs[:, i]
        curves.meta[f"variation {answer}"] = variation(y)
        curves.meta[f"lipschitz {answer}"] = normalized_lipschitz(alphas, y)
        print(f"{answer}: variation {variation(y):.3f}, normalised Lipschitz {normalized_lipschitz(alphas, y):.2f}")
    report(curves, args.out, f"interpolate_{args.method}", f"{args.a} → {args.b}, {args.method} ({args.model})", started)


if __name__ == "__main__":
    main()
