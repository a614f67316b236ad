"""Reproduce the paper's quantitative results: one task over a 200-item dataset, with the
paper's metrics (paper.py), on any model contgpt loads, in one process or spread over many.

    python demos/reproduce.py --task counting                      # built-in dataset (data/)
    python demos/reproduce.py --task events --data counting_events_seq.json --model qwen2.5-1.5b
    torchrun --nproc-per-node 4 demos/reproduce.py --task counting # the items shared by 4 ranks
    python demos/reproduce.py --table                              # the README table from finished runs

Each finished item is appended to <out>/<task>_<model>_<dtype>_<dataset>.jsonl with its curves
(ranks other than 0 append to .rank<r>.jsonl files, merged into that one at the end), so a
stopped run continues where it was, with any number of ranks, and recomputes nothing finished.
An item that cannot be run is recorded with its reason. At the end: a summary JSON, a markdown
table and the paper-style plots.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm

import paper
import parallel
from demos.cli import add_model_options, load_for_demo, pyplot, save_figure, save_json
from experiments import answer_probs
from precision import resolve
from sweep import last_logits

SUBSET = "_every"  # a dataset name's suffix for a --stride subset: <data>_every<K>
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "paperdata" / "reference" / "digitized_official_graphs_approx.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=paper.TASKS)
    parser.add_argument("--data", type=Path, help="a dataset in the official JSON format (default: the built-in one)")
    add_model_options(parser)
    parser.add_argument("--limit", type=int, help="run only the first N items (after --stride)")
    parser.add_argument("--stride", type=int, default=1, help="run every K-th item: a subset that spans a dataset sorted by n")
    parser.add_argument("--samples", type=int, default=40, help="points per sweep (durations c, or alphas)")
    parser.add_argument("--out", type=Path, default=Path("out/reproduce"))
    parser.add_argument("--table", action="store_true", help="print the markdown table of every summary in --out")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the paper's digitized areas, for --table")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.out, args.reference))
        return
    if not args.task:
        parser.error("--task is required (or --table)")
    if args.stride < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--stride and --limit must be at least 1")
    if args.task == "interpolation" and args.stride % len(paper.QUESTION_KINDS) == 0:
        parser.error(
            f"--stride {args.stride} would keep one question kind only: interpolation items cycle through "
            f"{', '.join(paper.QUESTION_KINDS)}; take a stride that is not a multiple of {len(paper.QUESTION_KINDS)}"
        )
    run(args)


def run(args) -> dict | None:
    """Run (or finish) one task over a dataset; under torchrun, this rank's share of it. Rank 0
    merges the records and returns the summary; other ranks return None."""
    started = time.perf_counter()
    world = parallel.join()
    try:
        return run_in(world, args, started)
    finally:
        world.close()


def run_in(world, args, started: float) -> dict | None:
    say = print if world.rank == 0 else (lambda *a, **k: None)
    items = paper.load_items(args.task, args.data)[:: args.stride][: args.limit]
    dataset = (args.data.stem if args.data else "builtin") + (f"{SUBSET}{args.stride}" if args.stride > 1 else "")
    precision = resolve(args.dtype, world.device(args.device))
    name = f"{args.task}_{model_label(args.model)}_{precision.name}_{dataset}"
    records = parallel.Records(args.out, name, world.rank)
    done = {r["key"] for r in records.read()}
    todo = [item for item in items if item["key"] not in done]
    world.barrier()  # every rank has read what is done before any rank appends
    ranks = f" on {world.size} ranks" if world.size > 1 else ""
    say(
        f"{args.task}: {len(items)} items from {args.data or 'the built-in dataset'}, {len(items) - len(todo)} already "
        f"done, {len(todo)} to run{ranks}, {args.samples} samples each"
    )
    if todo:
        run_share(world, args, name, records, todo)
    if world.rank != 0:
        return None
    keys = {item["key"] for item in items}
    merged = records.merge([item["key"] for item in items])
    summary = {
        "task": args.task,
        "model": str(args.model),
        "dtype": precision.name,
        "dataset": dataset,
        "samples": args.samples,
        "ranks": world.size,
        "seconds": time.perf_counter() - started,
        **paper.summarize(args.task, [r for r in merged if r["key"] in keys]),
    }
    save_json(summary, args.out / f"{name}.summary.json")
    plot(args.task, [r for r in merged if r["key"] in keys], summary, args.out / f"{name}.png")
    say(summary_line(summary))
    for key, error in summary["errors"].items():
        say(f"  item {key} not run: {error}")
    say(f"wrote {records.own}, {args.out / (name + '.summary.json')} and {args.out / (name + '.png')}")
    return summary


def run_share(world, args, name: str, records, todo: list[dict]) -> None:
    """Load the model on every rank, then take items from the shared queue, longest first, and
    append each record as it is finished. A rank that fails tells the others, which stop too."""
    error, model, tokenizer = None, None, None
    try:
        model, tokenizer = load_for_demo(args, world)
    except (Exception, SystemExit) as e:  # every rank must hear of it, whatever it is
        error = f"{type(e).__name__}: {e}"
    world.check(error, f"loading {args.model}")
    order = sorted(todo, key=lambda item: -paper.item_cost(args.task, item, tokenizer, args.samples))
    try:
        with records.append() as out, tqdm(total=len(order), desc=args.task, unit="item", disable=world.rank != 0) as bar:
            for ticket in world.tickets(name, len(order)):
                out.write(json.dumps(run_item(args.task, order[ticket], model, tokenizer, args.samples)) + "\n")
                out.flush()
                bar.update(ticket + 1 - bar.n)  # tickets count the items every rank has taken
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    world.check(error, "running the items")


def model_label(source: str) -> str:
    """A named model's name, or a checkpoint's file or folder name."""
    from load import MODELS

    return source if source in MODELS else Path(source).name.removesuffix(".gguf")


def run_item(task: str, item: dict, model, tokenizer, samples: int) -> dict:
    """One item's record: its curves and metrics, or the reason it could not be run."""
    try:
        if task == "interpolation":
            case = paper.interpolation_case(item, model, tokenizer, samples)
        else:
            case = getattr(paper, f"{task}_case")(item, tokenizer, samples)
    except ValueError as e:
        return {"key": item["key"], "error": str(e)}
    probs = answer_probs(last_logits(model, **case.inputs), tokenizer, case.answers)[0]
    if task in ("counting", "events"):
        metrics = paper.counting_metrics(probs, case.info["n"])
    elif task == "sums":
        metrics = paper.sums_metrics(probs, case.info["correct"], case.info["readings"])
    else:
        metrics = paper.interpolation_metrics(case.x, probs)
    return {
        "key": case.key,
        "info": case.info,
        "x": case.x,
        "answers": case.answers,
        "probs": [[round(p, 6) for p in row] for row in probs.tolist()],
        "metrics": metrics,
    }


def summary_line(s: dict) -> str:
    head = f"{s['task']} on {s['model']} ({s['dataset']}): {s['run']}/{s['items']} items run"
    if s["run"] == 0:
        return head
    if s["task"] in ("counting", "events"):
        return (
            f"{head}; area under completeness: observed {s['auc_completeness']:.3f}, counterfactual "
            f"{s['auc_counterfactual']:.3f}; IoU {s['auc_iou']:.3f}; peak rate {s['peak_rate']:.3f}"
        )
    if s["task"] == "sums":
        return (
            f"{head} ({s['undecidable']} undecidable); valid {s['valid_rate']:.3f}; of valid: successful "
            f"{s['successful_rate']:.3f}, strongly {s['strongly_rate']:.3f}, completely {s['completely_rate']:.3f}"
        )
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in s["mean_lipschitz_by_kind"].items())
    return (
        f"{head}; mean variation {s['mean_variation']:.3f}, share >= 0.05: {s['share_variation_over_0.05']:.3f}; mean normalised Lipschitz: {kinds}"
    )


def plot(task: str, records: list[dict], summary: dict, path: Path) -> None:
    """Completeness and IoU against the threshold (counting, events), the variation histogram
    (interpolation), the success rates (sums)."""
    if summary["run"] == 0:
        return
    plt = pyplot()
    taus = paper.THRESHOLDS.tolist()
    if task in ("counting", "events"):
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
        a.plot(taus, summary["completeness_curve"], label=f"observed (area {summary['auc_completeness']:.3f})")
        a.plot(taus, summary["counterfactual_curve"], "--", label=f"counterfactual (area {summary['auc_counterfactual']:.3f})")
        a.set(xlabel="threshold", ylabel="completeness", title=f"{task}: time sensitivity")
        b.plot(taus, summary["iou_curve"], label=f"IoU (area {summary['auc_iou']:.3f})")
        b.set(xlabel="threshold", ylabel="IoU", title=f"{task}: IoU")
        for ax in (a, b):
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    elif task == "sums":
        fig, a = plt.subplots(figsize=(5, 3.2), dpi=100)
        keys = ["valid_rate", "successful_rate", "strongly_rate", "completely_rate"]
        a.bar([k.replace("_rate", "") for k in keys], [summary[k] for k in keys])
        a.set(ylim=(0, 1), ylabel="rate", title="sums (rates after 'valid' are of valid items)")
    else:
        fig, a = plt.subplots(figsize=(5, 3.2), dpi=100)
        a.hist([r["metrics"]["variation"] for r in records if "metrics" in r], bins=20)
        a.set(xlabel="variation (largest excursion outside the endpoint range)", ylabel="items", title="interpolation")
    fig.suptitle(f"{summary['model']}, {summary['dataset']} dataset", fontsize=9)
    save_figure(fig, path)


def markdown_table(out: Path, reference: Path) -> str:
    """Counting and events areas beside the paper's six models (digitized from the official
    plots, +-0.02), then the sums and interpolation numbers of every finished run."""
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*.summary.json"))]
    lines = [
        "| task | model | dataset | items run | completeness (observed) | completeness (counterfactual) | IoU | peak rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if s["task"] in ("counting", "events") and s["run"]:
            lines.append(
                f"| {s['task']} | {s['model']} ({s.get('dtype', 'float32')}) | {s['dataset']} | {s['run']}/{s['items']} | "
                f"{s['auc_completeness']:.3f} | {s['auc_counterfactual']:.3f} | {s['auc_iou']:.3f} | {s['peak_rate']:.3f} |"
            )
    if reference.exists():
        ref = json.loads(reference.read_text())
        for task in ("counting", "counting_events"):
            for key in sorted(k for k in ref if k.startswith(f"graph__{task}__completeness")):
                model = key.split("purity_")[1].removesuffix(".png")
                iou = ref.get(f"graph__{task}__iou__iou_{model}.png", {}).get("iou", {}).get("auc")
                row = ref[key]
                lines.append(
                    f"| {task.replace('counting_', '')} | {model} (paper, digitized) | official | 200/200 | "
                    f"{row['observed']['auc']:.2f} | {row['counterfactual']['auc']:.2f} | {iou:.2f} | |"
                )
    lines += ["", "| task | model | dataset | items run | valid | successful | strongly | completely |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        if s["task"] == "sums" and s["run"]:
            lines.append(
                f"| sums | {s['model']} ({s.get('dtype', 'float32')}) | {s['dataset']} | {s['run']}/{s['items']} | {s['valid_rate']:.3f} | "
                f"{s['successful_rate']:.3f} | {s['strongly_rate']:.3f} | {s['completely_rate']:.3f} |"
            )
    lines += [
        "",
        "| task | model | dataset | items run | mean variation | share >= 0.05 | Lipschitz: both | neither | first | second |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if s["task"] == "interpolation" and s["run"]:
            k = s["mean_lipschitz_by_kind"]
            lines.append(
                f"| interpolation | {s['model']} ({s.get('dtype', 'float32')}) | {s['dataset']} | {s['run']}/{s['items']} | "
                f"{s['mean_variation']:.3f} | {s['share_variation_over_0.05']:.3f} | "
                + " | ".join(f"{k.get(q, float('nan')):.2f}" for q in paper.QUESTION_KINDS)
                + " |"
            )
    lines += ["", "| task | model | dataset | runtime | command |", "|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['task']} | {s['model']} ({s.get('dtype', 'float32')}) | {s['dataset']} | {s['seconds'] / 60:.0f} min | `{command(s)}` |")
    return "\n".join(lines)


def command(summary: dict) -> str:
    """The command line that made a summary (the official files under the name they ship with)."""
    data, _, stride = summary["dataset"].partition(SUBSET)
    words = ["python demos/reproduce.py --task", summary["task"]]
    words += [] if data == "builtin" else ["--data", f"{data}.json"]
    words += ["--model", summary["model"], "--dtype", summary.get("dtype", "float32")] + (["--stride", stride] if stride else [])
    words += [] if summary["samples"] == 40 else ["--samples", str(summary["samples"])]
    return " ".join(words)


if __name__ == "__main__":
    main()
