"""Explorer: a local web page where you stretch and shrink tokens with sliders and watch the
model's answer and its attention change.

    python demos/explore.py                          # the default model, http://127.0.0.1:8000/
    python demos/explore.py --model qwen2.5-1.5b --port 8001

The model is loaded once; the page (demos/explore.html: one file of HTML, CSS and JavaScript,
charts drawn as SVG by hand, nothing fetched from anywhere) asks this server for the tokens of a
prompt, the next-token distribution under a timeline, a batched sweep over a duration or an
interpolation weight, and the last position's attention weights in one layer. The server binds
to 127.0.0.1 unless --host says otherwise, reads no file and loads no model on request, bounds
every input, and runs one computation at a time: a request that a newer one from the same page
has overtaken while it waited is answered "superseded" without computing, and one whose client
has gone is dropped (a sweep at its next batch: the page's cancel button closes its request).

Text offsets (a token's characters, the interpolated word) travel in UTF-16 code units, the
page's own string indices, and are converted to Python's code points here, at the boundary, so
an emoji or any character outside the Basic Multilingual Plane selects what the page shows.

Slider moves are fast because the keys and values of the prompt's tokens before the first one
whose duration is not 1 are kept between requests (KV cache): a move recomputes only the rest.

No other web page can make it compute: a request must name this server in its Host header (so
a DNS-rebound name is refused), must not come from another Origin, and posts JSON, which a
page elsewhere cannot send without a CORS preflight this server never answers. The HTTP layer (the
request handler, the server and its bounds) is demos/explore_http.py; this file is what the
model side does for each request.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import experiments as ex
from contgpt import KVCache
from demos.cli import add_model_options, load_for_demo
from demos.explore_http import LOOPBACK, ROOT, BadRequest, ClientGone, serve
from paper import APPLES_PROMPT
from sweep import last_logits

MAX_PROMPT_CHARS = 4000
MAX_TOKENS = 512
MAX_DURATION = 100.0
MAX_POINTS = 200  # of a sweep
MAX_ANSWERS, MAX_ANSWER_CHARS, MAX_WORD_CHARS = 20, 32, 64
MAX_SWEEP_WORK = 20_000  # points x tokens of one sweep: at most a few minutes on two CPU cores
TOP = 10


@dataclass
class Request:
    """A validated request: the prompt, its timeline, what to track, what to look at."""

    prompt: str
    ids: list[int]
    durations: list[float]
    keep_positions: bool
    answers: list[str]  # empty: the server proposes them from the top tokens
    layer: int
    head: int | None  # None: the mean over heads
    interpolation: dict | None  # {"start", "end", "other", "alpha", "method"}, offsets in code points


class Explorer:
    """Every computation the page asks for, on one model, one at a time: JSON-ready data in and out."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.lock = threading.Lock()  # one computation at a time
        self.counter = threading.Lock()  # tickets in the order requests arrive
        self.latest: dict[str, int] = {}  # client -> its newest request's ticket
        self.tickets = 0
        self._reference: dict = {}  # the last reference_attention, by its request
        self._prefix: tuple = ((), None)  # (the ids of the tokens it holds, their KV cache)
        self.batch_size: int | None = None  # points per sweep batch (None: sweep.last_logits decides from free memory)

    # ------------------------------------------------------------------------- requests

    def info(self) -> dict:
        cfg = self.model.config
        return {
            "model": self.name,
            "dtype": str(self.model.precision),
            "layers": cfg.n_layers,
            "heads": cfg.n_heads,
            "prompt": APPLES_PROMPT,
            "answers": ", ".join(ex.DIGITS),
            "max_tokens": MAX_TOKENS,
            "max_duration": MAX_DURATION,
            "max_points": MAX_POINTS,
            "python": sys.executable,
        }

    def tokenize(self, body: dict) -> dict:
        prompt = _prompt(body)
        ids, offsets = self.tokenizer.encode_with_offsets(prompt)
        _check_length(ids)
        texts = [self.tokenizer.decode([i]) for i in ids]
        units = utf16_units(prompt)  # the page indexes its text in UTF-16 code units
        return {"tokens": [{"id": i, "text": t, "start": units[a], "end": units[b]} for i, t, (a, b) in zip(ids, texts, offsets)]}

    def predict(self, body: dict) -> dict:
        """The next-token distribution under the page's timeline (or interpolation), the top
        tokens and the tracked answers (with none asked for, the top tokens' texts: proposed),
        and the last position's attention: now, and before the change (every duration 1; in
        interpolation mode, the first word), each with its own positions."""
        request = self.parse(body)
        inputs, labels = self.inputs(request, [request.interpolation["alpha"]] if request.interpolation else None)
        logits, after = self.forward_with_attention(inputs, request)
        p = logits.float().softmax(-1)
        top = p.topk(TOP)
        top_texts = [self.tokenizer.decode([i]) for i in top.indices.tolist()]
        proposed = not request.answers
        if proposed:
            request = replace(request, answers=_proposals(top_texts))
        probs, other = ex.answer_probs(logits[None], self.tokenizer, request.answers)
        before, before_inputs = self.reference_attention(request)
        return {
            "top": [[text, v] for text, v in zip(top_texts, top.values.tolist())],
            "answers": dict(zip(request.answers, probs[0].tolist())),
            "proposed": proposed,
            "other": other.item(),
            "top_answer": request.answers[int(probs[0].argmax())],
            "positions": inputs["positions"][0].tolist(),
            "durations": inputs["durations"][0].tolist(),
            "labels": labels,
            "attention": {
                "after": after,
                "before": before,
                "before_positions": before_inputs["positions"][0].tolist(),
                "before_durations": before_inputs["durations"][0].tolist(),
            },
            "code": self.code(request, inputs),
        }

    def sweep_plan(self, body: dict) -> tuple[Request, torch.Tensor, Callable[[], dict]]:
        """(request, swept values, a function that builds every point's model inputs), all
        checked before anything runs. The inputs are built when the sweep runs, under the
        model's lock: a request that waits holds no embeddings (an interpolation's are points x
        tokens x dim floats)."""
        request = self.parse(body)
        if not request.answers:
            raise BadRequest("a sweep tracks answers: type them (comma-separated) before sweeping")
        points = _number(body, "points", 2, MAX_POINTS, integer=True)
        if points * len(request.ids) > MAX_SWEEP_WORK:  # before any input is built, interpolations included
            raise BadRequest(
                f"a sweep of {points} points over {len(request.ids)} tokens is more than the explorer runs at once "
                f"({MAX_SWEEP_WORK:,} points x tokens); use fewer points or a shorter prompt"
            )
        if request.interpolation:
            xs = torch.linspace(0.0, 1.0, points)
            self.inputs(request, [0.0])  # one point now, so that a word the swap cannot align is a 400 before the stream
            return request, xs, lambda: self.inputs(request, xs.tolist())[0]
        selected = _indices(body.get("selected"), len(request.ids))
        if not selected:
            raise BadRequest("select the tokens whose duration the sweep changes")
        low, high = _number(body, "low", 0.0, MAX_DURATION), _number(body, "high", 0.0, MAX_DURATION)
        xs = torch.linspace(low, high, points)
        durations = torch.tensor(request.durations).repeat(points, 1)
        durations[:, selected] = xs[:, None]
        return request, xs, lambda: {"tokens": torch.tensor(request.ids), **place(durations, request.keep_positions)}

    def sweep(self, plan, progress) -> dict:
        """The tracked answers along a sweep of the selected tokens' duration (or of the
        interpolation weight), batched by sweep.last_logits; progress(done, total) per batch."""
        request, xs, inputs = plan
        logits = last_logits(self.model, **inputs(), batch_size=self.batch_size, progress=progress)
        probs, other = ex.answer_probs(logits, self.tokenizer, request.answers)
        return {"x": xs.tolist(), "curves": {a: probs[:, i].tolist() for i, a in enumerate(request.answers)}, "other": other.tolist()}

    # ------------------------------------------------------------------------- pieces

    def parse(self, body: dict) -> Request:
        prompt = _prompt(body)
        ids = self.tokenizer.encode(prompt)
        _check_length(ids)
        durations = body.get("durations")
        if durations is None:
            durations = [1.0] * len(ids)
        if not isinstance(durations, list) or len(durations) != len(ids):
            raise BadRequest(f"durations must be a list of {len(ids)} numbers, one per token of the prompt")
        for i, d in enumerate(durations):
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= MAX_DURATION:
                raise BadRequest(f"durations[{i}] = {_shown(d)} is not a number in [0, {MAX_DURATION:g}]")
        answers = body.get("answers")
        if not isinstance(answers, list) or len(answers) > MAX_ANSWERS:
            raise BadRequest(f"answers must be a list of up to {MAX_ANSWERS} texts (alternatives joined by |)")
        if any(not isinstance(a, str) or not a.strip() or len(a) > MAX_ANSWER_CHARS for a in answers):
            raise BadRequest(f"each answer must be a text of 1 to {MAX_ANSWER_CHARS} characters")
        for k, answer in enumerate(answers):
            _unicode(answer, f"answers[{k}]")
        cfg = self.model.config
        layer = int(_number(body, "layer", 0, cfg.n_layers - 1, integer=True))
        head = body.get("head")
        if head is not None:
            head = int(_number(body, "head", 0, cfg.n_heads - 1, integer=True))
        keep_positions = body.get("keep_positions", False)
        if not isinstance(keep_positions, bool):
            raise BadRequest(f"keep_positions must be true or false, not {keep_positions!r}")
        return Request(
            prompt,
            ids,
            [float(d) for d in durations],
            keep_positions,
            [a.strip() for a in answers],
            layer,
            head,
            self.parse_interpolation(body, prompt),
        )

    def parse_interpolation(self, body: dict, prompt: str) -> dict | None:
        spec = body.get("interpolation")
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise BadRequest("interpolation must be an object {start, end, other, alpha, method}")
        if spec.get("start") == spec.get("end") == 0:
            raise BadRequest("select the word to interpolate: click its token in the timeline")
        units = utf16_units(prompt)
        start = _number(spec, "start", 0, units[-1], integer=True)
        end = _number(spec, "end", start + 1, units[-1], integer=True)
        start, end = _code_point(units, start, "start"), _code_point(units, end, "end")
        other = spec.get("other")
        if not isinstance(other, str) or not other.strip() or len(other) > MAX_WORD_CHARS:
            raise BadRequest(f"the second word must be a text of 1 to {MAX_WORD_CHARS} characters")
        _unicode(other, "the second word")
        method = spec.get("method", "linear")
        if method not in ("linear", "slerp"):
            raise BadRequest("method must be linear or slerp")
        return {"start": int(start), "end": int(end), "other": other, "alpha": _number(spec, "alpha", 0.0, 1.0), "method": method}

    def inputs(self, request: Request, alphas: list[float] | None) -> tuple[dict, list[str]]:
        """Model inputs (a batch of one, or of len(alphas) interpolation points) and a label
        per position: the prompt's tokens, or with a word swapped, its aligned segments."""
        if request.interpolation is None:
            durations = torch.tensor([request.durations])
            labels = [self.tokenizer.decode([i]) for i in request.ids]
            return {"tokens": torch.tensor([request.ids]), **place(durations, request.keep_positions)}, labels
        spec, template, word = request.interpolation, self.template(request), self.word(request)
        swap = ex.word_swap(self.model, self.tokenizer, template, word, spec["other"])
        embeds = swap.embeds(alphas, spec["method"])
        n = len(swap.seg_a)
        left = [self.tokenizer.decode([i]) for i in self.tokenizer.encode(template.format(word))[: len(swap.left)]]
        right = [self.tokenizer.decode([i]) for i in self.tokenizer.encode(template.format(word))[len(swap.left) + n :]]
        labels = left + [f"{word} → {spec['other']}"] * n + right
        timeline = place(swap.durations[None].expand(len(alphas), -1), request.keep_positions)
        return {"embeds": embeds, **timeline}, labels

    @staticmethod
    def word(request: Request) -> str:
        return request.prompt[request.interpolation["start"] : request.interpolation["end"]]

    @staticmethod
    def template(request: Request) -> str:
        """The prompt with {} where the interpolated word goes (other braces escaped)."""
        escape = lambda text: text.replace("{", "{{").replace("}", "}}")
        spec = request.interpolation
        return escape(request.prompt[: spec["start"]]) + "{}" + escape(request.prompt[spec["end"] :])

    def forward_with_attention(self, inputs: dict, request: Request, reuse_prefix: bool = True) -> tuple[torch.Tensor, list[float]]:
        """Last-position logits (vocab,) and the last query's attention weights over the keys in
        request.layer (one head, or the mean over heads), through a forward hook. With
        reuse_prefix, a prompt's tokens before the first changed one come from the prefix cache."""
        cache, k = self.prefix_cache(inputs) if reuse_prefix and "tokens" in inputs else (None, 0)  # before the hook: not this pass
        rest = {name: t[:, k:] for name, t in inputs.items()}
        seen = []
        hook = self.model.model.layers[request.layer].self_attn.probs.register_forward_hook(lambda m, i, out: seen.append(out))
        try:
            logits = self.model(**rest, cache=cache, last_only=True)[0, -1]
        finally:
            hook.remove()
        weights = seen[0][0, :, :, -1].reshape(self.model.config.n_heads, -1)  # (heads, keys)
        row = weights.mean(0) if request.head is None else weights[request.head]
        return logits, row.tolist()

    def prefix_cache(self, inputs: dict) -> tuple[KVCache, int]:
        """(a cache holding the prompt's first k tokens, k): those before the first token whose
        duration is not 1 (they sit at 0..k-1 in both position modes), at most all but the last.
        The cache is kept for the next request; the pass extends a view of it (expand(1))."""
        ids, durations = inputs["tokens"][0].tolist(), inputs["durations"][0]
        changed = (durations != 1).nonzero()
        k = min(int(changed[0]) if len(changed) else len(ids), len(ids) - 1)
        held, cache = self._prefix
        if held != tuple(ids[:k]):
            cache = KVCache()
            if k:
                self.model(torch.tensor([ids[:k]]), cache=cache, last_only=True)
            self._prefix = (tuple(ids[:k]), cache)
        return cache.expand(1) if k else None, k

    def reference_attention(self, request: Request) -> tuple[list[float], dict]:
        """The attention the page compares with (every duration 1, or in interpolation mode the
        first word, alpha 0) and its inputs. Kept for the page's current prompt and layer."""
        unchanged = replace(
            request,
            durations=[1.0] * len(request.ids),
            keep_positions=False,
            interpolation=request.interpolation and {**request.interpolation, "alpha": 0.0},
        )
        key = repr(unchanged)
        if key not in self._reference:
            inputs, _ = self.inputs(unchanged, [0.0] if unchanged.interpolation else None)
            self._reference = {key: (self.forward_with_attention(inputs, unchanged, reuse_prefix=False)[1], inputs)}  # the page's current view only
        return self._reference[key]

    def code(self, request: Request, inputs: dict) -> str:
        """Python that computes what the page shows, with contgpt as a library: saved as a file
        anywhere, it runs with this checkout's Python environment (it imports contgpt from ROOT)."""
        rounded = lambda t: [round(v, 6) for v in t[0].tolist()]
        lines = [
            "# what the contgpt explorer shows: save as a file and run it with contgpt's Python environment",
            "import sys",
            f"sys.path.insert(0, {str(ROOT)!r})  # the contgpt checkout",
            "",
            "import torch",
            "from load import load",
            "import experiments as ex",
            "",
            f"model, tokenizer = load({self.name!r}, dtype={self.model.precision.name!r})",
            f"prompt = {request.prompt!r}",
        ]
        if request.interpolation:
            spec = request.interpolation
            lines += [
                f"template = {self.template(request)!r}  # the prompt, {{}} where the word goes",
                f"swap = ex.word_swap(model, tokenizer, template, {self.word(request)!r}, {spec['other']!r})",
                f"embeds = swap.embeds([{spec['alpha']}], {spec['method']!r})",
            ]
            call = "embeds=embeds"
        else:
            lines.append("tokens = torch.tensor(tokenizer.encode(prompt))")
            call = "tokens"
        lines += [
            f"positions = torch.tensor({rounded(inputs['positions'])})",
            f"durations = torch.tensor({rounded(inputs['durations'])})",
            f"logits = model({call}, positions=positions, durations=durations, last_only=True)",
            f"answers = {request.answers!r}",
            "probs, other = ex.answer_probs(logits[:, -1], tokenizer, answers)",
            "top = int(probs[0].argmax())",
            'print(f"top answer: {answers[top]} ({100 * probs[0, top]:.1f}%)")',
            "for answer, p in zip(answers, probs[0].tolist()):",
            '    print(f"{answer:>8} {100 * p:5.1f}%")',
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------------- one at a time

    def run(self, client: str, compute, gone=lambda: False):
        """compute() under the model's lock, unless a newer request from this client (page and
        endpoint) arrived while this one waited: then None (superseded), without computing; or
        the client left while it waited (gone()): then ClientGone."""
        with self.counter:
            self.tickets += 1
            ticket = self.latest[client] = self.tickets
        try:
            with self.lock:
                if self.latest.get(client) != ticket:
                    return None
                if gone():
                    raise ClientGone
                with torch.no_grad():
                    return compute()
        finally:
            with self.counter:  # a client's entry lives while its newest request does: the map stays bounded
                if self.latest.get(client) == ticket:
                    del self.latest[client]


def place(durations: torch.Tensor, keep_positions: bool) -> dict:
    """Positions for (N, T) durations: tokens after a changed one shift (positions are the
    running sum of the durations, minus 1: the README's convention), or keep 0..T-1."""
    if keep_positions:
        positions = torch.arange(durations.shape[1], dtype=torch.float32).expand(durations.shape[0], -1)
    else:
        positions = durations.cumsum(1) - 1
    return {"positions": positions, "durations": durations}


def utf16_units(text: str) -> list[int]:
    """For each code point index 0..len(text), the UTF-16 code unit index it starts at: the
    page's (JavaScript's) index of the same place. Characters past U+FFFF take two units."""
    units = [0]
    for ch in text:
        units.append(units[-1] + (2 if ord(ch) > 0xFFFF else 1))
    return units


def _code_point(units: list[int], unit: int, name: str) -> int:
    """The code point index of a UTF-16 unit index (one of utf16_units(text))."""
    i = bisect.bisect_left(units, unit)
    if i == len(units) or units[i] != unit:
        raise BadRequest(f"{name} = {unit} falls inside a character (UTF-16 offsets must be at character boundaries)")
    return i


def _proposals(texts: list[str]) -> list[str]:
    """Tracked answers proposed from the top tokens' texts: stripped, distinct, non-empty."""
    seen = []
    for text in texts:
        text = text.strip()
        if text and len(text) <= MAX_ANSWER_CHARS and "|" not in text and "," not in text and text not in seen:
            seen.append(text)
    return seen or [texts[0]]


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt or len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt must be a text of 1 to {MAX_PROMPT_CHARS} characters")
    return _unicode(prompt, "prompt")


def _unicode(text: str, name: str) -> str:
    """text, if it is Unicode every endpoint can encode: JSON can carry half of a UTF-16 pair
    (a lone surrogate), which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"{name} holds a lone surrogate at character {e.start} (half of a UTF-16 pair); send valid Unicode text") from None
    return text


def _check_length(ids: list[int]) -> None:
    if len(ids) > MAX_TOKENS:
        raise BadRequest(f"the prompt has {len(ids)} tokens; the explorer takes at most {MAX_TOKENS}")


def _number(body: dict, key: str, low: float, high: float, integer: bool = False):
    value = body.get(key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high or not math.isfinite(value):
        raise BadRequest(f"{key} must be {'an integer' if integer else 'a number'} in [{low:g}, {high:g}], not {_shown(value)}")
    return value


def _shown(value) -> str:
    """A sent value as an error message quotes it: at most 40 characters (an integer may have thousands of digits)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= 40 else text[:37] + "..."


def _indices(value, n: int) -> list[int]:
    if not isinstance(value, list) or len(value) > n:
        raise BadRequest("selected must be a list of token indices")
    for i in value:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise BadRequest(f"selected token index {i!r} is not a token of the prompt (0 to {n - 1})")
    return sorted(set(value))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; anything but 127.0.0.1 opens the model to the network")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    args = parser.parse_args(argv)
    model, tokenizer = load_for_demo(args)
    try:
        server = serve(Explorer(model, tokenizer, args.model), args.host, args.port)
    except OSError as e:
        raise SystemExit(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from e
    if args.host not in LOOPBACK:
        print(f"WARNING: listening on {args.host}: anyone who can reach this machine can use the model", file=sys.stderr)
    host, port = server.server_address[:2]
    print(f"explorer: http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
