"""Refinement: split every token into m = 1, 2, 4, 8 sub-tokens with the same embedding, each
lasting 1/m of it, and watch the last-position distribution as m grows.

Read attention as an integral over time (Tai et al., arXiv 2510.03989): refining the partition
of the same step function should converge to the integral. It does exactly for the duration
weights (m copies of weight d/m add up to d); what changes is where the sub-tokens sit in
rotary time and that each sub-token becomes a query of its own in later layers. Printed for each
quadrature rule: the total variation and KL divergence between successive refinements.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from contgpt import RULES
from demos.cli import demo_parser, load_for_demo, pyplot, save_figure, save_json
from experiments import refine
from sweep import last_logits


def main(argv=None):
    parser = demo_parser(__doc__, samples=4)
    parser.add_argument("--prompt", default="The capital of France is")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples counts refinement levels m = 1, 2, 4, ...: at least 2")
    started = time.perf_counter()
    model, tokenizer = load_for_demo(args)
    ids = torch.tensor(tokenizer.encode(args.prompt))
    ms = [2**k for k in range(args.samples)]
    T = len(ids)
    print(f"prompt: {args.prompt!r} ({T} tokens); m = {ms}")

    results = {}
    for rule in RULES:
        dists = []
        for m in ms:
            index, positions, durations = refine(torch.arange(T, dtype=torch.float32), torch.ones(T), m)
            logits = last_logits(model, ids[index], positions=positions, durations=durations, rule=rule)
            dists.append(logits[0].float().log_softmax(-1))
        rows = []
        for m, prev, cur in zip(ms[1:], dists, dists[1:]):
            tv = 0.5 * (cur.exp() - prev.exp()).abs().sum().item()
            kl = (prev.exp() * (prev - cur)).sum().item()
            rows.append({"m": m, "tv": tv, "kl": kl})
        top = [tokenizer.decode([int(d.argmax())]) for d in dists]
        p_top = [d.exp().max().item() for d in dists]
        results[rule] = {"steps": rows, "top": top, "p_top": p_top}
        print(f"\nrule {rule!r}: top token by m: " + ", ".join(f"{m}: {t!r} {p:.3f}" for m, t, p in zip(ms, top, p_top)))
        for row in rows:
            print(f"  m {row['m'] // 2:>3} -> {row['m']:<3} total variation {row['tv']:.4f}   KL {row['kl']:.5f}")
    plot(results, ms, args.out / "refine.png", args.model)
    save_json({"prompt": args.prompt, "m": ms, "rules": results, "model": args.model}, args.out / "refine.json")
    print(f"\nwrote {args.out / 'refine.png'} and {args.out / 'refine.json'} in {time.perf_counter() - started:.1f} s")


def plot(results, ms, path, model):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=100)
    for rule, r in results.items():
        ax.plot(ms[1:], [s["tv"] for s in r["steps"]], "o-", label=rule)
    ax.set(yscale="log", xlabel="m (sub-tokens per token)", ylabel="TV(m/2, m)", title=f"convergence under refinement ({model})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms[1:], [str(m) for m in ms[1:]])
    ax.minorticks_off()
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="rule")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
