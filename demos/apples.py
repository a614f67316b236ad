"""Counting shrunk words: "apple apple apple apple" with every apple lasting c of a token.

Each of the repeated words' tokens gets duration c, c from 0.1 to 1; the tokens after them move
left so that every other token still lasts 1. A continuous model counts the total duration:
four apples of 0.75 are read as about three apples.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demos.cli import demo_parser, load_for_demo, report
from experiments import digit_sweep, span_of, word_ranges
from paper import COUNTING_PROMPT


def main(argv=None):
    parser = demo_parser(__doc__, samples=100)
    parser.add_argument("--word", default="apple", help="the repeated word")
    parser.add_argument("--repetitions", type=int, default=4, choices=range(1, 10), metavar="1..9")
    parser.add_argument("--category", default="fruit", help="what the question asks to count")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model, tokenizer = load_for_demo(args)

    sentence = " ".join([args.word] * args.repetitions)
    prompt = COUNTING_PROMPT.format(sentence=sentence, category=f"a {args.category}")
    at = prompt.index(sentence)
    ids, span = span_of(tokenizer, prompt, [(at + a, at + b) for a, b in word_ranges(sentence, args.word)])
    print(f"prompt: {prompt!r}\nshrunk tokens: {[tokenizer.decode([ids[i]]) for i in span]}")

    curves = digit_sweep(model, tokenizer, ids, span, args.samples, {"prompt": prompt, "model": args.model})
    report(
        curves,
        args.out,
        "apples",
        f"{args.repetitions} × '{args.word}', each lasting c ({args.model})",
        started,
        show=[str(d) for d in range(args.repetitions + 2)],
    )


if __name__ == "__main__":
    main()
