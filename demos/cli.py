"""The command-line plumbing every demo shares: model options, loading with a report, and the
output of a run (a text table, a figure, a JSON file, each written whole). The experiments
themselves are in experiments.py."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

from download import write_atomic
from experiments import Curves
from load import load
from parallel import refuse_distributed
from precision import DTYPES, pick_device


def demo_parser(description: str, samples: int) -> argparse.ArgumentParser:
    """The options every demo takes: --model, --dtype, --device, --samples, --out."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--samples", type=int, default=samples, help="points along the swept factor")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNG and JSON results")
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a named model, a checkpoint directory or a .gguf file")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 where the hardware multiplies it natively, else float32")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ...; auto: the GPU if there is one")


def load_for_demo(args: argparse.Namespace, world=None):
    """(model, tokenizer) from the --model, --dtype and --device options, with the load time and
    the chosen dtype (and why) printed; a model without tokenizer is an error. A demo is one
    process (it refuses to run under torchrun); demos/reproduce.py passes its parallel.World,
    which picks this rank's device, and only rank 0 speaks."""
    if world is None:
        refuse_distributed(Path(sys.argv[0]).name, "a demo is one sweep; demos/reproduce.py spreads a dataset over ranks")
    device = pick_device(args.device) if world is None else world.device(args.device)
    start = time.perf_counter()
    model, tokenizer = load(args.model, dtype=args.dtype, device=device)
    if tokenizer is None:
        raise SystemExit(f"{args.model} has no tokenizer files; the demos need one")
    if world is None or world.rank == 0:
        print(
            f"loaded {args.model} ({model.config.family}, {n_parameters(model) / 1e6:.0f}M parameters) on {model.device} "
            f"in {time.perf_counter() - start:.1f} s\ndtype: {model.precision}"
        )
    return model, tokenizer


def n_parameters(model) -> int:
    """Weights counted once each (a tied table once), int8 ones included, their scales not."""
    seen = {t.data_ptr(): t.numel() for name, t in model.state_dict().items() if not name.endswith(".scales")}
    return sum(seen.values())


def runs_text(curves: Curves) -> str:
    return ", ".join(f"{a} for {x0:.2f}..{x1:.2f}" for a, x0, x1 in curves.runs())


def report(curves: Curves, out: Path, name: str, title: str, started: float, show: list[str] | None = None) -> None:
    """Print the table and who wins where, save <out>/<name>.png and .json, say where and how long.
    The plot shows the answers in `show` (default all) and every answer that is on top somewhere."""
    print(table(curves))
    print(f"top answer: {runs_text(curves)}")
    if show is not None:
        show = [a for a in curves.answers if a in set(show) | set(curves.top())]
    png = plot(curves, out / f"{name}.png", title, show)
    data = save_json({"title": title, **curves.to_dict()}, out / f"{name}.json")
    print(f"wrote {png} and {data} in {time.perf_counter() - started:.1f} s")


# ----------------------------------------------------------------------------- output


def table(curves: Curves, rows: int = 10) -> str:
    """A compact text table: about `rows` evenly spaced points, one column per answer."""
    step = max(1, math.ceil(len(curves.x) / rows))
    picks = sorted(set(range(0, len(curves.x), step)) | {len(curves.x) - 1})
    width = max(5, *(len(a) for a in curves.answers))
    head = f"{curves.xlabel:>8} " + " ".join(f"{a:>{width}}" for a in curves.answers) + f" {'other':>{width}}  top"
    lines = [head]
    for i in picks:
        cells = " ".join(f"{p:>{width}.3f}" for p in curves.probs[i].tolist())
        lines.append(f"{curves.x[i]:>8.3f} {cells} {curves.other[i].item():>{width}.3f}  {curves.top()[i]}")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """The figure drawn in memory, then written under a temporary name and renamed: a reader (or
    a kill) never finds half a picture at path."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip(".") or "png")
    pyplot().close(fig)
    write_atomic(path, lambda out: out.write(image.getvalue()))
    return path


def plot(curves: Curves, path: Path, title: str, show: list[str] | None = None) -> Path:
    """Probability against the swept factor, one line per tracked answer, "other" dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for i, answer in enumerate(curves.answers):
        if show is None or answer in show:
            ax.plot(curves.x, curves.probs[:, i].tolist(), label=answer, linewidth=1.6)
    ax.plot(curves.x, curves.other.tolist(), "k--", label="other", linewidth=1.0)
    ax.set(xlabel=curves.xlabel, ylabel="probability", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(curves.answers) > 6 else 1, loc="best")
    return save_figure(fig, path)


def save_json(data: dict, path: Path) -> Path:
    """data as JSON at path, written under a temporary name and renamed (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1)
    write_atomic(path, lambda out: out.write(text.encode()))
    return path
