"""Benchmark: contgpt's sweep engine against the paper's method on transformers, on the same
model, the same machine, in one run.

    python bench.py                      # qwen2.5-0.5b, 3 repeats, writes out/bench.json

Each method runs in its own subprocess, so that its peak resident memory is its own:
- peak: the float32 matrix-multiply rate of this machine (best of a few shapes);
- contgpt: load, then the 100-point apples sweep and the 40-point events sweep through
  sweep.last_logits, and generation of 64 tokens with the KV cache and without it;
- paper: the paper's method reimplemented with transformers (test-only dependency) on the same
  GGUF file: one full forward per sweep point, the 4-D float mask built per point by a Python
  double loop, float position_ids.
Reported: medians over repeats, speed ratios, achieved GFLOP/s against the measured peak, peak
RSS against the float32 weight size, load times, and the largest difference in tracked
probabilities between the two methods (they compute the same thing).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

APPLES = 'Question: In the sentence "apple apple apple apple", how many times is a fruit mentioned? Reply with a single-digit number\nAnswer: '
EVENTS = (
    "Question: Alice goes to the shop. She buys a carton of milk. She buys an apple. She buys a potato. "
    "She buys a loaf of bread. How many items did Alice buy? Reply with a single-digit number\nAnswer: "
)
DIGITS = [str(d) for d in range(10)]


def sweeps(tokenizer):
    """(name, token ids, durations (N, T)) of the two benchmark sweeps, spans from characters."""
    from experiments import shrink, span_of, word_ranges

    at = APPLES.index("apple")
    ids_a, span_a = span_of(tokenizer, APPLES, [(at + a, at + b) for a, b in word_ranges(APPLES[at:at + 23], "apple")])
    start, end = EVENTS.index("She buys"), EVENTS.index("bread.") + len("bread.")
    ids_e, span_e = span_of(tokenizer, EVENTS, [(start, end)])
    return [
        ("apples", ids_a, shrink(len(ids_a), span_a, torch.linspace(0.1, 1.0, 100))[1]),
        ("events", ids_e, shrink(len(ids_e), span_e, torch.linspace(0.1, 1.0, 40))[1]),
    ]


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


# ----------------------------------------------------------------------------- workers


def worker_peak(args) -> dict:
    """float32 matmul GFLOP/s: the median of several runs, best over shapes (square, and the
    default model's MLP shape at a sweep's batch)."""
    rates = {}
    for m, k, n in [(2048, 2048, 2048), (4096, 4096, 4096), (2048, 896, 4864), (2048, 4864, 896)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            a @ b
        reps = max(3, int(3e11 / (2 * m * k * n)))
        median, _, _ = timed(lambda: a @ b, reps)
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n / median / 1e9
    return {"matmul_gflops": rates, "peak_gflops": max(rates.values()), "threads": torch.get_num_threads()}


def worker_contgpt(args) -> dict:
    from experiments import answer_probs
    from load import load
    from sweep import last_logits

    start = time.perf_counter()
    model, tokenizer = load(args.model)
    out = {"load_s": time.perf_counter() - start}
    cfg = model.config
    out["weights_gb"] = sum(p.numel() for p in model.parameters()) * 4 / 1e9
    for name, ids, durations in sweeps(tokenizer):
        tokens = torch.tensor(ids)
        median, times, logits = timed(lambda: last_logits(model, tokens, durations=durations), args.repeats)
        prefix = int((durations != durations[:1]).any(0).nonzero()[0])
        flops = sweep_flops(cfg, len(ids), prefix, len(durations))
        out[name] = {"points": len(durations), "tokens": len(ids), "shared_prefix": prefix, "median_s": median,
                     "times_s": times, "gflop": flops / 1e9, "gflops": flops / median / 1e9,
                     "probs": answer_probs(logits, tokenizer, DIGITS)[0].tolist()}  # fmt: skip
    out["generation"] = generation(model, tokenizer, args.repeats)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def sweep_flops(cfg, T: int, prefix: int, points: int) -> float:
    """Multiply-adds x 2 of a sweep: every linear layer for the prefix once and for each point's
    suffix, attention scores and mixing over the keys seen, the output head once per point."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    linear = cfg.dim * (q + 2 * kv) + q * cfg.dim + 3 * cfg.dim * cfg.hidden_dim  # per token per layer
    tokens = prefix + points * (T - prefix)
    attention = 2 * q * (sum(range(1, prefix + 1)) + points * sum(range(prefix + 1, T + 1)))  # scores + mixing
    return 2 * (cfg.n_layers * (linear * tokens + attention) + points * cfg.dim * cfg.vocab_size)


def generation(model, tokenizer, repeats) -> dict:
    """ms per new token for 64 greedy tokens: with the KV cache, and re-running the whole
    sequence for every token, from a short prompt (the apples question) and a 256-token one."""
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)
    result = {}
    for label, prompt in (("short", APPLES), ("long", long)):
        ids = torch.tensor(tokenizer.encode(prompt)[:256])
        cached, _, tokens = timed(lambda: model.generate(ids, 64), repeats)

        def rerun():
            seq = ids
            for _ in range(64):
                nxt = model(seq, last_only=True)[0, -1].argmax()
                seq = torch.cat((seq, nxt[None]))
            return seq[len(ids):].tolist()

        full, _, same = timed(rerun, 1)
        result[label] = {"prompt_tokens": len(ids), "cached_ms": cached / 64 * 1e3, "rerun_ms": full / 64 * 1e3,
                         "speedup": full / cached, "same_tokens": same == tokens}  # fmt: skip
    return result


def worker_paper(args) -> dict:
    """The paper's method on transformers: a forward per point with a Python-built 4-D mask."""
    import transformers

    from experiments import answer_probs
    from load import fetch_model, load

    _, tokenizer = load(args.model)  # our tokenizer: the same ids for both methods
    path = fetch_model(args.model) if not args.model.endswith(".gguf") else Path(args.model)
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                              attn_implementation="eager").eval()  # fmt: skip
    out = {"load_s": time.perf_counter() - start}
    for name, ids, durations in sweeps(tokenizer):
        tokens = torch.tensor([ids])
        T = len(ids)

        def run():
            rows = []
            for d in durations:
                positions = (d.cumsum(0) - 1)[None]
                mask = torch.zeros(1, 1, T, T)
                for i in range(T):  # the official code's per-sample double loop
                    for j in range(T):
                        mask[0, 0, i, j] = math.log(d[j]) if j <= i else -math.inf
                with torch.no_grad():
                    rows.append(model(tokens, attention_mask=mask, position_ids=positions).logits[0, -1])
            return torch.stack(rows)

        median, times, logits = timed(run, args.paper_repeats)
        out[name] = {"median_s": median, "times_s": times, "probs": answer_probs(logits, tokenizer, DIGITS)[0].tolist()}
    out["peak_rss_gb"] = peak_rss_gb()
    return out


WORKERS = {"peak": worker_peak, "contgpt": worker_contgpt, "paper": worker_paper}


# ----------------------------------------------------------------------------- orchestration


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a named model or a .gguf file (transformers reads GGUF)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each contgpt measurement")
    parser.add_argument("--paper-repeats", type=int, default=3, help="repeats of each paper-method sweep")
    parser.add_argument("--out", type=Path, default=Path("out/bench.json"))
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    results = {"date": date.today().isoformat(), "machine": machine(), "model": args.model}
    for name in WORKERS:
        print(f"running {name} ...", flush=True)
        command = [sys.executable, __file__, "--worker", name, "--model", args.model, "--repeats", str(args.repeats),
                   "--paper-repeats", str(args.paper_repeats)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    summarize(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.system()}"


def summarize(r: dict) -> None:
    ours, paper, peak = r["contgpt"], r["paper"], r["peak"]["peak_gflops"]
    print(f"\n{r['model']} on {r['machine']}, {r['date']}")
    print(f"float32 matmul peak (best shape): {peak:.0f} GFLOP/s\n")
    print(f"{'sweep':8} {'points':>6} {'paper (s)':>10} {'contgpt (s)':>12} {'speedup':>8} {'GFLOP/s':>8} {'% peak':>7} {'max |dp|':>9}")
    for name in ("apples", "events"):
        o, p = ours[name], paper[name]
        dp = max(abs(a - b) for ra, rb in zip(o["probs"], p["probs"]) for a, b in zip(ra, rb))
        o["max_prob_diff"] = dp
        print(f"{name:8} {o['points']:>6} {p['median_s']:>10.1f} {o['median_s']:>12.1f} {p['median_s'] / o['median_s']:>7.1f}x "
              f"{o['gflops']:>8.0f} {100 * o['gflops'] / peak:>6.0f}% {dp:>9.1e}")  # fmt: skip
    print(f"\npeak RSS: contgpt {ours['peak_rss_gb']:.2f} GB ({ours['peak_rss_gb'] / ours['weights_gb']:.2f}x the "
          f"{ours['weights_gb']:.2f} GB of float32 weights), paper on transformers {paper['peak_rss_gb']:.2f} GB")  # fmt: skip
    print(f"load: contgpt {ours['load_s']:.1f} s, transformers (GGUF) {paper['load_s']:.1f} s")
    for label, g in ours["generation"].items():
        print(f"generation, {label} prompt ({g['prompt_tokens']} tokens), 64 new: {g['cached_ms']:.0f} ms/token with the "
              f"cache, {g['rerun_ms']:.0f} ms/token re-running the sequence: {g['speedup']:.1f}x (same tokens: {g['same_tokens']})")  # fmt: skip


if __name__ == "__main__":
    main()
