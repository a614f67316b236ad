"""Counting events: every sentence after the first of a short story lasts c of its tokens.

The default story is the paper's shop story (four purchases). The counted events are all
sentences after the first one, which sets the scene; their tokens get duration c from 0.1 to 1.
"""

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demos.cli import demo_parser, load_for_demo, report
from experiments import digit_sweep, span_of

STORY = "Alice goes to the shop. She buys a carton of milk. She buys an apple. She buys a potato. She buys a loaf of bread."
QUESTION = "How many items did Alice buy?"
PROMPT = "Question: {story} {question} Reply with a single-digit number\nAnswer: "


def main(argv=None):
    parser = demo_parser(__doc__, samples=100)
    parser.add_argument("--story", default=STORY, help="sentences ending in . ! or ?; all but the first are shrunk")
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args(argv)
    sentences = re.split(r"(?<=[.!?])\s+", args.story.strip())
    if len(sentences) < 2:
        parser.error("the story needs a first sentence and at least one event sentence after it")
    started = time.perf_counter()
    model, tokenizer = load_for_demo(args)

    prompt = PROMPT.format(story=args.story.strip(), question=args.question)
    start = prompt.index(sentences[1])
    end = prompt.index(args.story.strip()) + len(args.story.strip())
    ids, span = span_of(tokenizer, prompt, [(start, end)])
    print(f"prompt: {prompt!r}\nshrunk: {tokenizer.decode([ids[i] for i in span])!r} ({len(span)} tokens, {len(sentences) - 1} events)")

    curves = digit_sweep(model, tokenizer, ids, span, args.samples, {"prompt": prompt, "model": args.model})
    report(
        curves,
        args.out,
        "events",
        f"{len(sentences) - 1} events, each sentence lasting c ({args.model})",
        started,
        show=[str(d) for d in range(len(sentences) + 1)],
    )


if __name__ == "__main__":
    main()
