"""Sums with a shrunk addend: "The sum of 24 and 13 is " with the tokens of 13 lasting c.

Squeezed into less time, a two-digit number can read like one digit: the model's first digit
moves from that of 24 + 13 towards those of 24 + 1 or 24 + 3.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demos.cli import demo_parser, load_for_demo, report
from experiments import digit_sweep, span_of

PROMPT = "The sum of {a} and {b} is "


def main(argv=None):
    parser = demo_parser(__doc__, samples=100)
    parser.add_argument("--a", type=int, default=24, help="first addend")
    parser.add_argument("--b", type=int, default=13, help="second addend, two digits, shrunk")
    args = parser.parse_args(argv)
    if not 10 <= args.b <= 99:
        parser.error("--b must have two digits")
    started = time.perf_counter()
    model, tokenizer = load_for_demo(args)

    prompt = PROMPT.format(a=args.a, b=args.b)
    at = prompt.rindex(str(args.b))
    ids, span = span_of(tokenizer, prompt, [(at, at + 2)])
    readings = {
        f"{args.a}+{args.b}": args.a + args.b,
        f"{args.a}+{args.b // 10}": args.a + args.b // 10,
        f"{args.a}+{args.b % 10}": args.a + args.b % 10,
    }
    print(f"prompt: {prompt!r}\nshrunk tokens: {[tokenizer.decode([ids[i]]) for i in span]}")
    print("first digits: " + ", ".join(f"{k} = {v} -> {str(v)[0]}" for k, v in readings.items()))

    curves = digit_sweep(model, tokenizer, ids, span, args.samples, {"prompt": prompt, "readings": readings, "model": args.model})
    report(
        curves,
        args.out,
        "sums",
        f"{args.a} + {args.b}, the {args.b} lasting c ({args.model})",
        started,
        show=sorted({str(v)[0] for v in readings.values()}),
    )


if __name__ == "__main__":
    main()
