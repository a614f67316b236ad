"""Generation from a continuous prefix: the same prompt continued twice, once as written and
once with a span of it shrunk, side by side.

The prompt runs once into a KV cache that keeps every key's log-duration; each new token then
sits one step after the last position, with duration 1, and costs a single-token forward.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from demos.cli import add_model_options, load_for_demo, save_json
from experiments import shrink, span_of

PROMPT = 'In the sentence "apple apple apple apple", the word apple appears'


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--span", default="apple apple apple apple", help="text in the prompt to shrink (first occurrence)")
    parser.add_argument("--duration", type=float, default=0.5, help="duration of each shrunk token")
    parser.add_argument("--samples", "--max-new-tokens", dest="max_new_tokens", type=int, default=24, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the JSON result")
    args = parser.parse_args(argv)
    if args.span not in args.prompt:
        parser.error(f"--span {args.span!r} does not occur in the prompt")
    model, tokenizer = load_for_demo(args)

    at = args.prompt.index(args.span)
    ids, span = span_of(tokenizer, args.prompt, [(at, at + len(args.span))])
    _, durations = shrink(len(ids), span, [args.duration])
    print(f"prompt: {args.prompt!r}\nshrunk to {args.duration}: {[tokenizer.decode([ids[i]]) for i in span]}\n")
    stop = {tokenizer.eos_id} if tokenizer.eos_id is not None else None
    results = {}
    for label, timeline in (("ordinary", None), (f"shrunk ({args.duration})", durations[0])):
        start = time.perf_counter()
        out = model.generate(
            torch.tensor(ids), args.max_new_tokens, durations=timeline, temperature=args.temperature, top_k=args.top_k, seed=args.seed, stop=stop
        )
        seconds = time.perf_counter() - start
        text = tokenizer.decode(out)
        results[label] = {"text": text, "tokens": out, "seconds": seconds}
        print(f"{label:>16}: {text!r}\n{'':>16}  ({len(out)} tokens in {seconds:.2f} s, {len(out) / seconds:.1f} tokens/s)")
    path = save_json({"prompt": args.prompt, "span": span, "duration": args.duration, "model": args.model, **results}, args.out / "generate.json")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
