"""Interpolating Boolean operators: the embedding of "AND" moves towards "OR" (and every other
pair of AND, OR, NAND, NOR, XOR) inside "1 AND 0"-style questions, for the inputs 00, 01, 10, 11.

At a few alphas the in-between operator's truth table is printed: for each input the answer the
model prefers, 1 or 0 (the likelier of the two), with p("1") / (p("1") + p("0")) beside it. A continuous model should move from one
operator's table to the other's through tables that make sense in between.
"""

import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from demos.cli import demo_parser, load_for_demo, pyplot, save_figure, save_json
from experiments import answer_probs, word_swap
from sweep import last_logits

TEMPLATE = "Question: What is the truth value of the following statement?\n{x} {{}} {y}\nAnswer (0 or 1): "
OPERATORS = ["AND", "OR", "NAND", "NOR", "XOR"]
INPUTS = ["00", "01", "10", "11"]
TRUTH = {"AND": "0001", "OR": "0111", "NAND": "1110", "NOR": "1000", "XOR": "0110"}


def main(argv=None):
    parser = demo_parser(__doc__, samples=11)
    parser.add_argument("--operators", nargs="+", default=OPERATORS, choices=OPERATORS)
    parser.add_argument("--show", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="alphas whose tables are printed")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model, tokenizer = load_for_demo(args)
    alphas = torch.linspace(0.0, 1.0, args.samples)
    shown = sorted({int(torch.argmin((alphas - a).abs())) for a in args.show})

    results = {}
    for a, b in itertools.combinations(args.operators, 2):
        swaps = [word_swap(model, tokenizer, TEMPLATE.format(x=x, y=y), a, b) for x, y in INPUTS]
        embeds = torch.cat([s.embeds(alphas) for s in swaps])  # (4 * samples, T, D): one sweep per pair
        logits = last_logits(model, embeds=embeds, durations=swaps[0].durations, progress=f"{a} -> {b}")
        probs = answer_probs(logits, tokenizer, ["1", "0"])[0]
        p1 = (probs[:, 0] / probs.sum(1)).reshape(len(INPUTS), -1)  # (inputs, alphas): P(1 | 1 or 0)
        results[f"{a}->{b}"] = p1.T.tolist()
        print(f"\n{a} -> {b}   (truth tables: {a} {TRUTH[a]}, {b} {TRUTH[b]}; inputs {' '.join(INPUTS)})")
        for i in shown:
            bits = "".join("1" if p > 0.5 else "0" for p in p1[:, i].tolist())
            print(f"  alpha {alphas[i].item():.2f}: {bits}   P(1 | 1 or 0) = {' '.join(f'{p:.2f}' for p in p1[:, i].tolist())}")
    plot_pairs(results, alphas, args.out / "logic.png", args.model)
    save_json({"alphas": alphas.tolist(), "inputs": INPUTS, "p1": results, "model": args.model}, args.out / "logic.json")
    print(f"\nwrote {args.out / 'logic.png'} and {args.out / 'logic.json'} in {time.perf_counter() - started:.1f} s")


def plot_pairs(results: dict, alphas, path: Path, model: str) -> None:
    plt = pyplot()
    cols = min(5, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), dpi=100, squeeze=False, sharey=True)
    for ax, (pair, p1) in zip(axes.flat, results.items()):
        for k, inp in enumerate(INPUTS):
            ax.plot(alphas.tolist(), [row[k] for row in p1], label=inp)
        ax.set_title(pair, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(results) :]:
        ax.axis("off")
    axes.flat[0].legend(title="input", fontsize=7, title_fontsize=7)
    fig.suptitle(f'P("1" | "1" or "0") while the operator moves a -> b ({model})', fontsize=10)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
