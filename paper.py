"""The paper's quantitative protocol (Marro et al., ICLR 2025, section 5): its four 200-item
tasks, read from datasets in the official JSON format, and their metrics as the paper defines
them. demos/reproduce.py runs it; this module holds what is testable without a model run.

Tasks (each item becomes one batched sweep):
- counting: 'Question: In the sentence "w w w", how many times is a <category> mentioned?...'
  with the repeated words shrunk to c; n = repetitions.
- events: a tutorial of n steps ("- ..." lines), the steps shrunk to c.
- sums: "<name> ate 82 ... and 38 ...": one addend's tokens shrunk to c (which one: shrink_1).
- interpolation: "Question: <question with a word> (yes/no)" with the word's embedding moving
  from the first option to the second; four question kinds per pair.

Differences from the official code, all deliberate: spans come from character offsets, not
substring search on decoded tokens; answers match exactly (the whitespace-stripped token text),
not by substring; words of different token counts are aligned by durations, not skipped; every
item is either run or reported with the reason it could not be.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

import experiments as ex
from experiments import DIGITS

TASKS = ("counting", "events", "sums", "interpolation")
YES_NO = ["yes|Yes", "no|No"]  # exact token texts; both cases, since instruct models often answer lowercase
THRESHOLDS = torch.linspace(0, 1, 101)
BUILTIN = Path(__file__).resolve().parent / "data"
COUNTING_PROMPT = 'Question: In the sentence "{sentence}", how many times is {category} mentioned? Reply with a single-digit number\nAnswer: '
APPLES_PROMPT = COUNTING_PROMPT.format(sentence="apple apple apple apple", category="a fruit")  # the paper's first example
INTERPOLATION_PROMPT = "Question: {question} (yes/no)\nAnswer:"
QUESTION_KINDS = ("both", "neither", "first", "second")
SCHEMAS = {
    "counting": {"word": str, "category_with_article": str, "repetitions": int},
    "events": {"sentence": str, "num_sentences": int},
    "sums": {"template": str, "fields": dict, "shrink_1": bool},
    "interpolation": {"options": list, "questions": dict},
}

# ----------------------------------------------------------------------------- datasets


def load_items(task: str, path: Path | None = None) -> list[dict]:
    """The task's items: from an official-format JSON file, or the built-in dataset (data/).

    As in the paper, sums uses the first 200 items and interpolation the first 50 option pairs,
    each with its four question kinds (200 items). Each item gets a "key" naming it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    path = Path(path) if path else BUILTIN / f"{task}.json"
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: an official dataset is a JSON list of items, not {type(data).__name__}")
    for i, item in enumerate(data):
        for key, kind in SCHEMAS[task].items():
            if not isinstance(item.get(key), kind):
                raise ValueError(f"{path}: item {i} has no {key} of type {kind.__name__} (a {task} item needs {', '.join(SCHEMAS[task])})")
    if task == "sums":
        data = data[:200]
    if task == "interpolation":
        return [{**pair, "kind": kind, "key": f"{i}-{kind}"} for i, pair in enumerate(data[:50]) for kind in QUESTION_KINDS]
    return [{**item, "key": str(i)} for i, item in enumerate(data)]


# ----------------------------------------------------------------------------- tasks into sweeps


@dataclass
class Case:
    """One item as a sweep: inputs for sweep.last_logits, the swept values, tracked answers."""

    key: str
    inputs: dict
    x: list[float]
    answers: list[str]
    info: dict = field(default_factory=dict)


def counting_case(item, tokenizer, samples: int) -> Case:
    n = item["repetitions"]
    if not 1 <= n <= 9:
        raise ValueError(f"repetitions {n} cannot be answered with a single digit")
    sentence = " ".join([item["word"]] * n)
    prompt = COUNTING_PROMPT.format(sentence=sentence, category=item["category_with_article"])
    at = prompt.index(sentence)
    ranges = [(at + a, at + b) for a, b in ex.word_ranges(sentence, item["word"])]
    return shrink_case(item, tokenizer, prompt, ranges, n, samples)


def events_case(item, tokenizer, samples: int) -> Case:
    """The span runs from the first step's "-" to the end of the last step."""
    text, n = item["sentence"], item["num_sentences"]
    steps = list(re.finditer(r"^- .*$", text, re.M))
    if len(steps) != n:
        raise ValueError(f"num_sentences is {n} but the tutorial lists {len(steps)} steps")
    if not 1 <= n <= 9:
        raise ValueError(f"{n} steps cannot be answered with a single digit")
    return shrink_case(item, tokenizer, text, [(steps[0].start(), steps[-1].end())], n, samples)


def shrink_case(item, tokenizer, prompt, ranges, n, samples) -> Case:
    ids, span = ex.span_of(tokenizer, prompt, ranges)
    cs = torch.linspace(0.1, 1.0, samples)
    positions, durations = ex.shrink(len(ids), span, cs)
    inputs = {"tokens": torch.tensor(ids), "positions": positions, "durations": durations}
    return Case(item["key"], inputs, cs.tolist(), DIGITS, {"n": n, "span": span, "tokens": len(ids)})


def sums_case(item, tokenizer, samples: int) -> Case:
    prompt, where = format_with_offsets(item["template"], item["fields"])
    shrunk, other = ("item_1", "item_2") if item["shrink_1"] else ("item_2", "item_1")
    a, b = item["fields"][shrunk], item["fields"][other]
    correct = str(a + b)[0]
    readings = sorted({str(int(d) + b)[0] for d in str(a)} - {correct})  # the shrunk number read as one of its digits
    case = shrink_case(item, tokenizer, prompt, [where[shrunk]], None, samples)
    case.info.update(correct=correct, readings=readings, sum=a + b, shrunk=a)
    return case


def format_with_offsets(template: str, fields: dict) -> tuple[str, dict[str, tuple[int, int]]]:
    """template.format(**fields) and the character range of each field's first occurrence."""
    out, where = "", {}
    for literal, name, spec, _ in string.Formatter().parse(template):
        out += literal
        if name is not None:
            value = format(fields[name], spec or "")
            where.setdefault(name, (len(out), len(out) + len(value)))
            out += value
    return out, where


def interpolation_case(item, model, tokenizer, samples: int) -> Case:
    a, b = item["options"][:2]
    question = item["questions"][item["kind"]]
    if question.count("{}") != 1:
        raise ValueError(f"question {question!r} needs exactly one {{}}")
    template = INTERPOLATION_PROMPT.format(question=question)  # the question keeps its {} for the word
    swap = ex.word_swap(model, tokenizer, template, a, b)
    alphas = torch.linspace(0.0, 1.0, samples)
    inputs = {"embeds": swap.embeds(alphas), "durations": swap.durations}
    return Case(item["key"], inputs, alphas.tolist(), YES_NO, {"kind": item["kind"], "segments": len(swap.seg_a)})


def prompt_text(task: str, item: dict) -> str:
    """The prompt an item asks the model (for interpolation, with the first option)."""
    if task == "counting":
        sentence = " ".join([item["word"]] * item["repetitions"])
        return COUNTING_PROMPT.format(sentence=sentence, category=item["category_with_article"])
    if task == "events":
        return item["sentence"]
    if task == "sums":
        return format_with_offsets(item["template"], item["fields"])[0]
    return INTERPOLATION_PROMPT.format(question=item["questions"][item["kind"]]).format(item["options"][0])


def item_cost(task: str, item: dict, tokenizer, samples: int) -> int:
    """An item's work, roughly: its prompt's tokens times its sweep points. (An item that cannot
    be built costs nothing: it is recorded with its reason at once.)"""
    try:
        return len(tokenizer.encode(prompt_text(task, item))) * samples
    except (ValueError, KeyError, IndexError, TypeError):
        return 0


# ----------------------------------------------------------------------------- metrics


def counting_metrics(probs: torch.Tensor, n: int) -> dict:
    """Curves over the thresholds tau for one item: probs (N_c, 10) digit probabilities, the
    last row at c = 1. Observed set F = {k : max_c p_k(c) >= tau}, counterfactual F' =
    {k : p_k(1) >= tau}, expected E = {1..n}: completeness |F n E| / n, counterfactual
    completeness |F' n E| / n, IoU |F n E| / |F u E|; and the peak rate, the share of E that is
    the top digit at some c."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    expected = torch.zeros(10, dtype=torch.bool)
    expected[1 : n + 1] = True
    observed = probs.max(0).values[None, :] >= THRESHOLDS[:, None].double()  # (taus, 10)
    counterfactual = probs[-1][None, :] >= THRESHOLDS[:, None].double()
    hits = (observed & expected).sum(1).double()
    peaks = torch.zeros(10, dtype=torch.bool)
    peaks[probs.argmax(1)] = True
    return {
        "completeness": (hits / n).tolist(),
        "counterfactual": ((counterfactual & expected).sum(1).double() / n).tolist(),
        "iou": (hits / (observed | expected).sum(1).double()).tolist(),
        "peak_rate": (peaks & expected).sum().item() / n,
    }


def area(curve) -> float:
    """Trapezoid area under a curve sampled at THRESHOLDS."""
    return float(torch.trapezoid(torch.as_tensor(curve, dtype=torch.float64), THRESHOLDS.double()))


def sums_metrics(probs: torch.Tensor, correct: str, readings: list[str]) -> dict:
    """valid: the correct first digit is the top digit at c = 1. successful: at some c a
    shrunk reading's first digit is more likely than the correct one; strongly: at some c a
    reading is the top digit; completely: at every c where a reading beats the correct digit,
    a reading is the top digit. Items whose readings all share the correct first digit are
    undecidable (no reading can be told apart)."""
    probs = torch.as_tensor(probs)
    c, r = int(correct), [int(x) for x in readings]
    valid = int(probs[-1].argmax()) == c
    if not r:
        return {"valid": valid, "decidable": False}
    beats = (probs[:, r] > probs[:, c : c + 1]).any(1)
    on_top = torch.isin(probs.argmax(1), torch.tensor(r))
    return {
        "valid": valid,
        "decidable": True,
        "successful": bool(valid and beats.any()),
        "strongly": bool(valid and on_top.any()),
        "completely": bool(valid and beats.any() and on_top[beats].all()),
    }


def interpolation_metrics(x, probs: torch.Tensor) -> dict:
    """Variation and normalised Lipschitz estimate of each tracked curve, and of the item (the
    larger of its curves; NaN Lipschitz where every curve is flat)."""
    probs = torch.as_tensor(probs)
    variations = [ex.variation(probs[:, i]) for i in range(probs.shape[1])]
    lipschitz = [ex.normalized_lipschitz(x, probs[:, i]) for i in range(probs.shape[1])]
    finite = [v for v in lipschitz if not math.isnan(v)]
    return {"variations": variations, "lipschitz": lipschitz, "variation": max(variations), "lipschitz_max": max(finite) if finite else float("nan")}


def summarize(task: str, records: list[dict]) -> dict:
    """Dataset-level numbers from per-item records ({"key", "metrics"} or {"key", "error"})."""
    done = [r for r in records if "metrics" in r]
    out = {"items": len(records), "run": len(done), "errors": {r["key"]: r["error"] for r in records if "error" in r}}
    if not done:
        return out
    m = [r["metrics"] for r in done]
    if task in ("counting", "events"):
        curves = {k: torch.tensor([x[k] for x in m], dtype=torch.float64).mean(0) for k in ("completeness", "counterfactual", "iou")}
        out.update({f"{k}_curve": v.tolist() for k, v in curves.items()})
        out.update({f"auc_{k}": area(v) for k, v in curves.items()})
        out["peak_rate"] = sum(x["peak_rate"] for x in m) / len(m)
    elif task == "sums":
        decidable = [x for x in m if x["decidable"]]
        valid = [x for x in decidable if x["valid"]]
        out.update(undecidable=len(m) - len(decidable), valid=len(valid), valid_rate=len(valid) / len(decidable) if decidable else float("nan"))
        for k in ("successful", "strongly", "completely"):
            out[f"{k}_rate"] = sum(x[k] for x in valid) / len(valid) if valid else float("nan")
    else:
        out["mean_variation"] = sum(x["variation"] for x in m) / len(m)
        out["share_variation_over_0.05"] = sum(x["variation"] >= 0.05 for x in m) / len(m)
        by_kind = {}
        for r in done:
            by_kind.setdefault(r["info"]["kind"], []).append(r["metrics"]["lipschitz_max"])
        out["mean_lipschitz_by_kind"] = {k: _nanmean(v) for k, v in by_kind.items()}
        out["flat_items"] = sum(math.isnan(x["lipschitz_max"]) for x in m)
    return out


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")
