"""Run the tutorial notebooks top to bottom and store their outputs in them (what the repository
page shows): `python tutorials/run.py` for all of them, or name some (`python tutorials/run.py 01 05`).

Each notebook runs in a fresh Jupyter kernel (nbclient, from requirements-dev.txt) with
tutorials/ as its working directory; a cell that raises stops it with the error. Outputs are
kept small: figures are drawn at 72 dpi, and execution metadata (timings) is dropped so that
a rerun changes only what the cells printed and drew.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def notebooks(names: list[str]) -> list[Path]:
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return found
    chosen = [p for p in found if any(p.name.startswith(n) for n in names)]
    if len(chosen) < len(names):
        raise SystemExit(f"no notebook matches some of {names}; the notebooks are: {', '.join(p.name for p in found)}")
    return chosen


def execute(path: Path, timeout: int = 600):
    """The notebook at path, run top to bottom (nbformat's NotebookNode); raises on a failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    args = parser.parse_args(argv)
    import nbformat

    for path in notebooks(args.names):
        started = time.perf_counter()
        print(f"{path.name}: running…", end=" ", flush=True)
        nb = execute(path)
        nbformat.write(nb, path)
        print(f"{time.perf_counter() - started:.0f} s, {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    sys.exit(main())
