"""The command-line plumbing every demo shares: model options, loading with a report, and
printing and saving a sweep's results. The experiments themselves are in experiments.py."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from experiments import Curves, plot, save_json, table
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
