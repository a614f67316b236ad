"""Scaling time: every position multiplied by s. Unlike a shift, this changes every distance
the rotary embedding sees, and the answer changes with it (compare demos/translate.py).

Tracked answers: every token that reaches probability 0.05 somewhere along the sweep.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from translate import parser, run

from experiments import scale


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    factors = torch.linspace(0.01, 1.5, args.samples)
    run(args, "scale", "scale s", factors, scale, f"every position × s ({args.model})")


if __name__ == "__main__":
    main()
