"""Benchmark: contgpt's sweep engine in every dtype the hardware offers, against the paper's
method on transformers, on the same model, the same machine, in one run.

    python bench.py                      # qwen2.5-0.5b, every dtype offered, writes out/bench.json
    python bench.py --dtype int8         # float32 (the reference) and int8 only

Each measurement runs in its own subprocess, so that its peak resident memory is its own:
- peak: the matrix-multiply rate of this machine in each dtype (float32 and bfloat16 matmuls,
  torch's int8 weight kernel), on the default model's MLP shapes at a sweep's batch;
- contgpt, once per dtype: load (dequantizing the GGUF file), the 100-point apples sweep and
  the 40-point events sweep through sweep.last_logits, generation of 64 tokens with the KV
  cache (and, in float32, without it);
- paper, in float32 and (where bf16 is native) in bfloat16: the paper's method reimplemented
  with transformers (test-only dependency) on the same GGUF file: one full forward per sweep
  point, the 4-D float mask built per point by a Python double loop, float position_ids.
Reported: medians over repeats, speed ratios, achieved GFLOP/s against the measured peak of the
same dtype, peak RSS against the weights' size, load time, the cache's size on disk, and the
largest difference in tracked probabilities against contgpt in float32, with the share of sweep
points whose top answer is the same.
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
from functools import partial
from pathlib import Path

import torch

from experiments import DIGITS
from paper import APPLES_PROMPT

EVENTS = (
    "Question: Alice goes to the shop. She buys a carton of milk. She buys an apple. She buys a potato. "
    "She buys a loaf of bread. How many items did Alice buy? Reply with a single-digit number\nAnswer: "
)


def sweeps(tokenizer):
    """(name, token ids, durations (N, T)) of the two benchmark sweeps, spans from characters."""
    from experiments import shrink, span_of, word_ranges

    at = APPLES_PROMPT.index("apple")
    ids_a, span_a = span_of(tokenizer, APPLES_PROMPT, [(at + a, at + b) for a, b in word_ranges(APPLES_PROMPT[at : at + 23], "apple")])
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

MATMUL_SHAPES = [(2048, 896, 4864), (2048, 4864, 896)]  # the default model's MLP at a sweep's batch


def worker_peak(args) -> dict:
    """GFLOP/s of the model's MLP shapes in float32, bfloat16 (where it is native) and with
    torch's int8 weight kernel (with the activations int8 runs with here): the fastest of
    several runs, best shape."""
    from int8 import quantize_int8

    rates = {}
    dtypes, _ = offered_dtypes("all")
    int8_activations = int8_precision().compute
    for dtype in dtypes:
        for m, k, n in MATMUL_SHAPES:
            if dtype == "int8":
                q, scales = quantize_int8(torch.randn(n, k), int8_activations)
                a = torch.randn(m, k, dtype=int8_activations)
                op = partial(torch.ops.aten._weight_int8pack_mm, a, q, scales)
            else:
                a, b = torch.randn(m, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
                op = partial(torch.matmul, a, b)
            op()
            _, times, _ = timed(op, 7)  # the fastest run: another process can only slow a run down
            rates.setdefault(dtype, {})[f"{m}x{k}x{n}"] = 2 * m * k * n / min(times) / 1e9
    return {"matmul_gflops": rates, "peak_gflops": {d: max(r.values()) for d, r in rates.items()}, "threads": torch.get_num_threads()}


def worker_contgpt(args) -> dict:
    from demos.cli import n_parameters
    from experiments import answer_probs
    from load import fetch_model, load
    from sweep import last_logits

    start = time.perf_counter()
    model, tokenizer = load(args.model, dtype=args.dtype)
    out = {"load_s": time.perf_counter() - start, "precision": str(model.precision), "dtype": model.precision.name}
    out["weights_gb"] = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in model.state_dict().values()}.values()) / 1e9
    out["parameters"] = n_parameters(model)
    out["cache_gb"] = cache_size(fetch_model(args.model) if not args.model.endswith(".gguf") else Path(args.model)) / 1e9
    cfg = model.config
    for name, ids, durations in sweeps(tokenizer):
        tokens = torch.tensor(ids)
        median, times, logits = timed(partial(last_logits, model, tokens, durations=durations), args.repeats)
        prefix = int((durations != durations[:1]).any(0).nonzero()[0])
        flops = sweep_flops(cfg, len(ids), prefix, len(durations))
        out[name] = {
            "points": len(durations),
            "tokens": len(ids),
            "shared_prefix": prefix,
            "median_s": median,
            "times_s": times,
            "gflop": flops / 1e9,
            "gflops": flops / median / 1e9,
            "probs": answer_probs(logits, tokenizer, DIGITS)[0].tolist(),
        }
    out["generation"] = generation(model, tokenizer, args.repeats, rerun=model.precision.name == "float32")
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def cache_size(gguf: Path) -> int:
    """Bytes the model occupies in the cache: the downloaded file, all that is kept there."""
    return gguf.stat().st_size


def sweep_flops(cfg, T: int, prefix: int, points: int) -> float:
    """Multiply-adds x 2 of a sweep: every linear layer for the prefix once and for each point's
    suffix, attention scores and mixing over the keys seen, the output head once per point."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    linear = cfg.dim * (q + 2 * kv) + q * cfg.dim + 3 * cfg.dim * cfg.hidden_dim  # per token per layer
    tokens = prefix + points * (T - prefix)
    attention = 2 * q * (sum(range(1, prefix + 1)) + points * sum(range(prefix + 1, T + 1)))  # scores + mixing
    return 2 * (cfg.n_layers * (linear * tokens + attention) + points * cfg.dim * cfg.vocab_size)


def generation(model, tokenizer, repeats, rerun: bool) -> dict:
    """ms per new token for 64 greedy tokens with the KV cache, from a short prompt (the apples
    question) and a 256-token one; with rerun, also re-running the whole sequence per token."""
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)
    result = {}
    for label, prompt in (("short", APPLES_PROMPT), ("long", long)):
        ids = torch.tensor(tokenizer.encode(prompt)[:256])
        model.generate(ids, 2)  # warm-up
        cached, _, tokens = timed(partial(model.generate, ids, 64), repeats)
        result[label] = {"prompt_tokens": len(ids), "cached_ms": cached / 64 * 1e3, "tokens": tokens}
        if not rerun:
            continue
        full, _, same = timed(partial(rerun_greedy, model, ids, 64), 1)
        result[label].update(rerun_ms=full / 64 * 1e3, speedup=full / cached, same_tokens=same == tokens)
    return result


def rerun_greedy(model, ids, n: int) -> list[int]:
    """n greedy tokens without a cache: the whole sequence runs again for each new token."""
    seq = ids
    for _ in range(n):
        nxt = model(seq, last_only=True)[0, -1].argmax()
        seq = torch.cat((seq, nxt[None]))
    return seq[len(ids) :].tolist()


def worker_paper(args) -> dict:
    """The paper's method on transformers: a forward per point with a Python-built 4-D mask."""
    import transformers

    from experiments import answer_probs
    from load import fetch_model, load

    _, tokenizer = load(args.model)  # our tokenizer: the same ids for both methods
    path = fetch_model(args.model) if not args.model.endswith(".gguf") else Path(args.model)
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=getattr(torch, args.dtype), attn_implementation="eager"
    ).eval()
    out = {"load_s": time.perf_counter() - start, "dtype": args.dtype}
    for name, ids, durations in sweeps(tokenizer):
        tokens = torch.tensor([ids])
        median, times, logits = timed(partial(paper_method, model, tokens, durations), args.paper_repeats)
        out[name] = {"median_s": median, "times_s": times, "probs": answer_probs(logits, tokenizer, DIGITS)[0].tolist()}
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def paper_method(model, tokens, durations) -> torch.Tensor:
    """Last-position logits (N, vocab) of a transformers model for each row of durations, run
    as the official code does: one forward per point, its 4-D mask built by a Python loop."""
    T = tokens.shape[1]
    rows = []
    for d in durations:
        positions = (d.cumsum(0) - 1)[None]
        mask = torch.zeros(1, 1, T, T)
        for i in range(T):  # the official code's per-sample double loop
            for j in range(T):
                mask[0, 0, i, j] = math.log(d[j]) if j <= i else -math.inf
        with torch.no_grad():
            logits = model(tokens, attention_mask=mask.to(model.dtype), position_ids=positions).logits
        rows.append(logits[0, -1].float())
    return torch.stack(rows)


SHAPES = {  # configs of real models; random weights cost the same to run as trained ones
    "qwen2.5-0.5b": dict(
        family="qwen2", vocab_size=151936, dim=896, hidden_dim=4864, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64, rope_theta=1e6
    ),
    "llama-2-7b": dict(family="llama", vocab_size=32000, dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128),
}


def synchronized_sweep(model, tokens, durations) -> None:
    """One sweep, waited for: CUDA runs asynchronously, and a timer must stop when the work does."""
    from sweep import last_logits

    last_logits(model, tokens, durations=durations)
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def worker_shapes(args) -> dict:
    """Seconds per item of the reproduction's counting task (40 points of a 30-token prompt, the
    last 24 tokens shrunk) for models of real shapes with random weights, on this machine's
    device ("auto": the GPU if there is one) and dtype: what a rank of a torchrun job spends
    per item, for planning a run at scale."""
    from contgpt import Config, Transformer
    from precision import pick_device, resolve

    device = pick_device("auto")
    chosen = resolve(args.dtype if args.dtype != "all" else "auto", device)
    out = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else machine()), "dtype": chosen.name}
    tokens = torch.randint(0, 30000, (30,), device=device)
    durations = torch.ones(40, 30)
    durations[:, 6:] = torch.linspace(0.1, 1.0, 40)[:, None]
    for name, shape in SHAPES.items():
        default = torch.get_default_dtype()
        torch.set_default_dtype(chosen.compute)  # built in its dtype: a float32 7B would not fit in 24 GB
        try:
            with torch.device(device):
                model = Transformer(Config(**shape)).eval()
                torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.02)  # a Transformer's embedding starts empty
        finally:
            torch.set_default_dtype(default)
        sweep = partial(synchronized_sweep, model, tokens, durations.to(device))
        sweep()
        median, times, _ = timed(sweep, args.repeats)
        flops = sweep_flops(model.config, 30, 6, 40)
        out[name] = {"seconds_per_item": median, "times_s": times, "tflops": flops / median / 1e12}
        model = sweep = None  # free it before the next one
    return out


WORKERS = {"peak": worker_peak, "contgpt": worker_contgpt, "paper": worker_paper, "shapes": worker_shapes}


# ----------------------------------------------------------------------------- orchestration


def main():
    from precision import DTYPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a named model or a .gguf file (transformers reads GGUF)")
    parser.add_argument(
        "--dtype", default="all", choices=("all",) + DTYPES, help="all: every dtype this hardware offers; else float32 (the reference) and this one"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each contgpt measurement")
    parser.add_argument("--paper-repeats", type=int, default=1, help="repeats of each paper-method sweep (a minute each)")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper's method (the slowest part)")
    parser.add_argument(
        "--shapes", action="store_true", help="only time one reproduction item on random-weight models of real shapes, on the GPU if any"
    )
    parser.add_argument(
        "--hooks", action="store_true", help="only time a forward with the hook points (identity modules) as they are, removed, and hooked"
    )
    parser.add_argument("--out", type=Path, default=Path("out/bench.json"))
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    from parallel import refuse_distributed
    from precision import cpu_bf16

    refuse_distributed("bench.py", "a benchmark measures one process on one machine")
    if args.hooks:
        return hook_cost(args.model, max(args.repeats, 20))
    if args.shapes:
        result = worker_shapes(args)
        print(json.dumps(result, indent=1))
        for name in SHAPES:
            print(
                f"{name}: {result[name]['seconds_per_item'] * 1e3:.1f} ms per counting item ({result[name]['tflops']:.1f} TFLOP/s) "
                f"on {result['device']}, {result['dtype']}"
            )
        return
    dtypes, skipped = offered_dtypes(args.dtype)
    results = {"date": date.today().isoformat(), "machine": machine(), "model": args.model, "dtypes": dtypes, "skipped": skipped}
    jobs = [("peak", "float32")] + [("contgpt", d) for d in dtypes]
    if not args.no_paper:  # in bfloat16 too where it is native (emulated, it would take hours and tell nothing)
        jobs += [("paper", d) for d in ["float32"] + (["bfloat16"] if cpu_bf16()[0] else [])]
    for worker, dtype in jobs:
        print(f"running {worker} {dtype} ...", flush=True)
        command = [
            sys.executable,
            __file__,
            "--worker",
            worker,
            "--model",
            args.model,
            "--dtype",
            dtype,
            "--repeats",
            str(args.repeats),
            "--paper-repeats",
            str(args.paper_repeats),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{worker} {dtype} failed:\n{done.stderr[-3000:]}")
        results.setdefault(worker, {})[dtype] = json.loads(done.stdout.strip().splitlines()[-1])
    results["peak"] = results["peak"]["float32"]
    summarize(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def hook_cost(name: str, repeats: int) -> None:
    """What the named hook points (resid_in, resid_out, self_attn.probs: identity modules) cost a
    forward of the apples prompt: as they are, replaced by plain functions (the peer: no module
    call at all), and with a no-op forward hook on every one. Alternating runs, medians."""
    from load import load

    model, tokenizer = load(name, dtype="float32")
    tokens = torch.tensor(tokenizer.encode(APPLES_PROMPT))
    points = [(block, attr) for block in model.model.layers for attr in ("resid_in", "resid_out")]
    points += [(block.self_attn, "probs") for block in model.model.layers]
    identities = [getattr(owner, attr) for owner, attr in points]

    def set_points(kind):
        for (owner, attr), module in zip(points, identities, strict=True):
            if kind == "removed":
                owner._modules.pop(attr, None)
                object.__setattr__(owner, attr, lambda x: x)
            else:
                owner.__dict__.pop(attr, None)
                owner._modules[attr] = module

    kinds, times = ("as they are", "removed", "hooked"), {}
    with torch.no_grad():
        model(tokens)  # warm up
        for _ in range(repeats):
            for kind in kinds:
                set_points("removed" if kind == "removed" else "modules")
                handles = [m.register_forward_hook(lambda *a: None) for m in identities] if kind == "hooked" else []
                started = time.perf_counter()
                model(tokens)
                times.setdefault(kind, []).append(time.perf_counter() - started)
                for h in handles:
                    h.remove()
    set_points("modules")
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"hook points ({len(points)} identity modules), {name}, {len(tokens)} tokens, float32, median of {repeats} forwards, {machine()}:")
    for kind in kinds:
        print(f"  {kind:>12}: {median[kind] * 1e3:8.1f} ms  ({median[kind] / median['removed']:.3f}x the forward without them)")


def offered_dtypes(wanted: str) -> tuple[list[str], dict[str, str]]:
    """The dtypes to run (float32 always, as the reference) and why the others are not."""
    from precision import cpu_bf16

    fast, why = cpu_bf16()
    skipped = {}
    if not fast:
        skipped["bfloat16"] = why
    if not (int8 := int8_precision()).int8:
        skipped["int8"] = int8.reason
    candidates = ["float32", "bfloat16", "int8"] if wanted in ("all", "auto") else ["float32", wanted]
    if wanted == "auto":
        candidates = ["float32", "bfloat16" if fast else "float32"]
    return list(dict.fromkeys(d for d in candidates if d not in skipped)), {d: r for d, r in skipped.items() if d in candidates}


def int8_precision():
    """What dtype="int8" resolves to on this CPU (int8 weights, or the fallback), quietly."""
    import warnings

    from precision import resolve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve("int8", torch.device("cpu"))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.system()}"


def speed_ratio(peer: dict | None, seconds: float) -> str:
    """How many times faster than the peer's median a run of `seconds` is, or "-" without a peer."""
    return f"{peer['median_s'] / seconds:.1f}x" if peer else "-"


def agreement(probs, reference) -> tuple[float, float]:
    """(largest |dp| of any tracked probability, share of points with the same top answer)."""
    dp = max(abs(a - b) for ra, rb in zip(probs, reference) for a, b in zip(ra, rb))
    top = [max(range(len(r)), key=r.__getitem__) for r in probs]
    top_ref = [max(range(len(r)), key=r.__getitem__) for r in reference]
    return dp, sum(a == b for a, b in zip(top, top_ref)) / len(top)


def summarize(r: dict) -> None:
    peaks, ours, paper = r["peak"]["peak_gflops"], r["contgpt"], r.get("paper", {})
    reference = ours["float32"]
    print(f"\n{r['model']} on {r['machine']}, {r['date']}")
    print("matmul peak (best MLP shape): " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items()))
    for dtype, why in r["skipped"].items():
        print(f"not run: {dtype} ({why})")
    print(
        f"\n{'sweep':7} {'dtype':9} {'points':>6} {'contgpt s':>9} {'vs fp32':>7} {'paper fp32':>10} {'paper same':>10} "
        f"{'GFLOP/s':>7} {'% peak':>6} {'max |dp|':>8} {'same top':>8}"
    )
    for name in ("apples", "events"):
        for dtype, o in ours.items():
            dp, same = agreement(o[name]["probs"], reference[name]["probs"])
            o[name].update(max_prob_diff=dp, same_top=same, speedup_vs_float32=reference[name]["median_s"] / o[name]["median_s"])
            peer = paper.get("bfloat16" if dtype != "float32" else "float32", {}).get(name)
            p32 = paper.get("float32", {}).get(name)
            ratio = partial(speed_ratio, seconds=o[name]["median_s"])
            o[name].update(
                vs_paper_float32=p32 and p32["median_s"] / o[name]["median_s"], vs_paper_same_dtype=peer and peer["median_s"] / o[name]["median_s"]
            )
            print(
                f"{name:7} {dtype:9} {o[name]['points']:>6} {o[name]['median_s']:>9.2f} {o[name]['speedup_vs_float32']:>6.2f}x "
                f"{ratio(p32):>10} {ratio(peer):>10} {o[name]['gflops']:>7.0f} {100 * o[name]['gflops'] / peaks[dtype]:>5.0f}% "
                f"{dp:>8.1e} {100 * same:>7.0f}%"
            )
    for dtype, p in paper.items():
        for name in ("apples", "events"):
            dp, same = agreement(p[name]["probs"], reference[name]["probs"])
            p[name].update(max_prob_diff=dp, same_top=same)
        print(
            f"paper's method, transformers {dtype}: apples {p['apples']['median_s']:.1f} s, events {p['events']['median_s']:.1f} s, "
            f"load {p['load_s']:.1f} s, peak RSS {p['peak_rss_gb']:.2f} GB, max |dp| vs contgpt float32 {p['apples']['max_prob_diff']:.1e}"
        )
    print()
    for dtype, o in ours.items():
        g = o["generation"]
        rerun = f" (re-running the sequence: {g['short']['rerun_ms']:.0f} and {g['long']['rerun_ms']:.0f})" if "rerun_ms" in g["short"] else ""
        print(
            f"{dtype:9} load {o['load_s']:.1f} s, weights {o['weights_gb']:.2f} GB, peak RSS {o['peak_rss_gb']:.2f} GB "
            f"({o['peak_rss_gb'] / o['weights_gb']:.2f}x the weights), cache on disk {o['cache_gb']:.2f} GB; generation "
            f"{g['short']['cached_ms']:.0f} ms/token ({g['short']['prompt_tokens']}-token prompt), {g['long']['cached_ms']:.0f} "
            f"({g['long']['prompt_tokens']}){rerun}"
        )


if __name__ == "__main__":
    main()
