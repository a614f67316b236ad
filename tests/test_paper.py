"""The paper's protocol: metrics against hand-computed values, official-format parsing on
fixtures written here (never the official files), and the reproduce command end to end."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import experiments as ex
import paper
from conftest import CACHE, ROOT, fetch_or_skip
from demos import reproduce


def digits(rows):
    """(N, 10) digit probabilities from {digit: p} rows; unlisted digits get 0."""
    out = torch.zeros(len(rows), 10)
    for i, row in enumerate(rows):
        for d, p in row.items():
            out[i, d] = p
    return out


# ----------------------------------------------------------------------------- counting metrics


def test_counting_metrics_by_hand():
    # n = 3; over c the top digits are 1, 2, 2 and at c = 1 the model says 2
    probs = digits([{1: 0.6, 2: 0.3}, {1: 0.2, 2: 0.7}, {2: 0.5, 3: 0.4, 5: 0.1}])
    m = paper.counting_metrics(probs, 3)
    at = lambda curve, tau: curve[round(tau * 100)]
    # max over c: p1 .6, p2 .7, p3 .4, p5 .1; at c = 1: p2 .5, p3 .4, p5 .1
    assert at(m["completeness"], 0.0) == 1.0 and at(m["iou"], 0.0) == pytest.approx(3 / 10)
    assert at(m["completeness"], 0.35) == 1.0 and at(m["iou"], 0.35) == 1.0  # F = {1, 2, 3} = E
    assert at(m["completeness"], 0.45) == pytest.approx(2 / 3) and at(m["iou"], 0.45) == pytest.approx(2 / 3)
    assert at(m["completeness"], 0.65) == pytest.approx(1 / 3) and at(m["completeness"], 0.75) == 0.0
    assert at(m["counterfactual"], 0.35) == pytest.approx(2 / 3) and at(m["counterfactual"], 0.45) == pytest.approx(1 / 3)
    assert at(m["iou"], 0.05) == pytest.approx(3 / 4)  # F = {1, 2, 3, 5}
    assert m["peak_rate"] == pytest.approx(2 / 3)  # 1 and 2 peak, 3 never does


def test_iou_and_peak_rate_use_their_own_denominators():
    """Sets chosen so that the plausible wrong rules differ: F = {2, 3, 5} against E = {1, 2, 3}
    at tau 0.3 gives IoU |F n E| / |F u E| = 2/4, where |F n E| / |F| and / |E| give 2/3; the
    top digits over c are 1, 5 and 7, so the peak rate (the share of E that is ever on top) is
    1/3, where dividing by the digits on top, or not intersecting with E, gives other values."""
    probs = digits([{1: 0.35, 2: 0.32, 3: 0.33}, {5: 0.6, 2: 0.2, 3: 0.2}, {7: 0.5, 3: 0.31, 2: 0.19}])
    m = paper.counting_metrics(probs, 3)
    # max over c: p1 .35, p2 .32, p3 .33, p5 .6, p7 .5: at tau 0.34, F = {1, 5, 7}; at tau 0.3, F = {1, 2, 3, 5, 7}
    assert m["iou"][34] == pytest.approx(1 / 5) and m["completeness"][34] == pytest.approx(1 / 3)
    assert m["iou"][30] == pytest.approx(3 / 5) and m["completeness"][30] == 1.0
    assert m["peak_rate"] == pytest.approx(1 / 3)  # only 1 of E = {1, 2, 3} is ever on top (5 and 7 are not in E)
    assert paper.counting_metrics(probs, 2)["peak_rate"] == pytest.approx(1 / 2)  # 1 of E = {1, 2}; 1 of the 3 digits on top would be 1/3
    # F = {2, 3, 5}, not a subset of E nor containing it: IoU 2/4
    m = paper.counting_metrics(digits([{2: 0.4, 3: 0.4, 1: 0.2}, {5: 0.9, 1: 0.1}]), 3)
    assert m["iou"][30] == pytest.approx(2 / 4) and m["completeness"][30] == pytest.approx(2 / 3)
    assert m["counterfactual"][30] == 0.0  # at c = 1 only 5 reaches 0.3, and 5 is not in E


def test_counting_metrics_of_a_flat_curve():
    probs = digits([{4: 1.0}] * 5)  # always "4", n = 4: only 4 of E is ever seen
    m = paper.counting_metrics(probs, 4)
    assert m["completeness"][50] == pytest.approx(0.25) and m["completeness"] == m["counterfactual"]
    assert m["peak_rate"] == pytest.approx(0.25)


def test_counting_ties_count_as_reaching_the_threshold():
    m = paper.counting_metrics(digits([{1: 0.5, 2: 0.5}]), 2)
    assert m["completeness"][50] == 1.0  # both reach tau = 0.5 exactly
    assert m["peak_rate"] == 0.5  # argmax takes one of the tied digits


def test_area_and_summary_of_one_item():
    assert paper.area([1.0] * 101) == pytest.approx(1.0)
    assert paper.area(paper.THRESHOLDS.tolist()) == pytest.approx(0.5)
    record = {"key": "0", "metrics": paper.counting_metrics(digits([{1: 0.6, 2: 0.3}, {2: 0.9}]), 2)}
    s = paper.summarize("counting", [record, {"key": "1", "error": "why not"}])
    assert (s["items"], s["run"], s["errors"]) == (2, 1, {"1": "why not"})
    assert s["auc_completeness"] == pytest.approx(paper.area(record["metrics"]["completeness"]))
    # completeness is 1 up to tau 0.6 (both of E seen), 1/2 up to 0.9, then 0. By the trapezoid
    # rule: 0.60 + 0.0075 (the step at 0.6) + 0.145 + 0.0025 (the step at 0.9) = 0.755; the mean
    # of the 101 samples would be 0.7525 (tolerance: the float32 threshold grid, 1e-7)
    assert s["auc_completeness"] == pytest.approx(0.755, abs=1e-6)


def test_summaries_of_counting_and_events_average_the_items():
    """Two items: the summary's peak rate is their mean (1/2 and 1: 3/4); events are summarised as
    counting is; a summary of nothing but errors has no metrics."""
    records = [
        {"key": "0", "metrics": paper.counting_metrics(digits([{1: 0.9}, {2: 0.9}, {5: 0.9}]), 4)},  # 1, 2 on top: 2/4
        {"key": "1", "metrics": paper.counting_metrics(digits([{1: 0.9}, {2: 0.9}]), 2)},
    ]  # 1, 2 on top: 2/2
    for task in ("counting", "events"):
        s = paper.summarize(task, records)
        assert s["peak_rate"] == pytest.approx(3 / 4)
        assert s["auc_completeness"] == pytest.approx(
            paper.area([(a + b) / 2 for a, b in zip(records[0]["metrics"]["completeness"], records[1]["metrics"]["completeness"], strict=True)])
        )
    assert paper.summarize("counting", [{"key": "0", "error": "x"}]) == {"items": 1, "run": 0, "errors": {"0": "x"}}


def test_sums_rates_of_no_decidable_or_no_valid_items_are_nan():
    undecidable = paper.sums_metrics(digits([{3: 1.0}]), "3", [])
    s = paper.summarize("sums", [{"key": "0", "metrics": undecidable}])
    assert s["undecidable"] == 1 and math.isnan(s["valid_rate"]) and math.isnan(s["successful_rate"])
    invalid = paper.sums_metrics(digits([{2: 0.9}, {2: 0.6, 3: 0.4}]), "3", ["2"])
    s = paper.summarize("sums", [{"key": "0", "metrics": invalid}])
    assert s["valid_rate"] == 0.0 and all(math.isnan(s[f"{k}_rate"]) for k in ("successful", "strongly", "completely"))


def test_area_is_the_trapezoid_rule_not_the_mean_of_the_samples():
    """Curves whose ends weigh half: a wrong rule (the mean of 101 samples) gives twice these."""
    assert paper.area([1.0] + [0.0] * 100) == pytest.approx(0.005, abs=1e-7)  # mean: 0.0099
    assert paper.area([1.0] + [0.0] * 99 + [1.0]) == pytest.approx(0.01, abs=1e-7)  # mean: 0.0198
    assert paper.area([0.0] * 50 + [1.0] * 51) == pytest.approx(0.505, abs=1e-6)  # mean: 0.50495
    assert paper.area([0.0] * 51 + [1.0] * 50) == pytest.approx(0.495, abs=1e-6)  # mean: 0.49505


def test_sums_rates_count_decidable_items_and_valid_ones():
    """valid_rate is over the decidable items (an undecidable item counts in neither part);
    the success rates are over the valid items. By hand: 3 decidable items of 4, 2 of them
    valid: valid_rate 2/3 (not 2/4 over all items, nor 3/4 counting the undecidable one, which
    is valid); of the 2 valid, 1 is successful and strongly so, none completely."""
    readings = ["2"]
    items = [
        paper.sums_metrics(digits([{2: 0.6, 3: 0.3}, {4: 0.5, 2: 0.3, 3: 0.2}, {3: 0.9}]), "3", readings),  # valid, strongly, not completely
        paper.sums_metrics(digits([{3: 0.6, 2: 0.3}, {3: 0.7, 2: 0.2}]), "3", readings),  # valid, unsuccessful
        paper.sums_metrics(digits([{2: 0.9}, {2: 0.6, 3: 0.4}]), "3", readings),  # invalid
        paper.sums_metrics(digits([{3: 1.0}]), "3", []),  # undecidable (and valid)
    ]
    s = paper.summarize("sums", [{"key": str(i), "metrics": m} for i, m in enumerate(items)])
    assert (s["undecidable"], s["valid"]) == (1, 2)
    assert s["valid_rate"] == pytest.approx(2 / 3)
    assert s["successful_rate"] == pytest.approx(1 / 2) and s["strongly_rate"] == pytest.approx(1 / 2)
    assert s["completely_rate"] == 0.0


# ----------------------------------------------------------------------------- sums metrics


def test_sums_metrics_by_hand():
    # 24 + 13 with 13 shrunk: correct "3"; readings 24 + 1 -> "2", 24 + 3 -> "2"
    case_readings = ["2"]
    valid_only = digits([{3: 0.6, 2: 0.3}, {3: 0.7, 2: 0.2}])
    assert paper.sums_metrics(valid_only, "3", case_readings) == {
        "valid": True,
        "decidable": True,
        "successful": False,
        "strongly": False,
        "completely": False,
    }
    beats_not_top = digits([{4: 0.5, 2: 0.3, 3: 0.2}, {3: 0.7}])  # 2 beats 3, but 4 is on top
    assert paper.sums_metrics(beats_not_top, "3", case_readings)["successful"]
    assert not paper.sums_metrics(beats_not_top, "3", case_readings)["strongly"]
    top_once = digits([{2: 0.6, 3: 0.3}, {4: 0.5, 2: 0.3, 3: 0.2}, {3: 0.9}])
    m = paper.sums_metrics(top_once, "3", case_readings)
    assert m["strongly"] and not m["completely"]  # at the second c, 2 beats 3 but is not on top
    always_top = digits([{2: 0.6, 3: 0.3}, {3: 0.9}])
    assert paper.sums_metrics(always_top, "3", case_readings)["completely"]
    tied = digits([{2: 0.4, 3: 0.4, 1: 0.2}, {3: 0.9}])  # the reading only ties the correct digit: it does not beat it
    assert not paper.sums_metrics(tied, "3", case_readings)["successful"]


def test_sums_invalid_and_undecidable():
    invalid = paper.sums_metrics(digits([{2: 0.9}, {2: 0.6, 3: 0.4}]), "3", ["2"])
    assert not invalid["valid"] and not invalid["successful"]
    assert paper.sums_metrics(digits([{3: 1.0}]), "3", []) == {"valid": True, "decidable": False}


def test_sums_case_readings(trained_bpe_json):
    from tokenizer import Tokenizer

    tok = Tokenizer.from_file(trained_bpe_json)
    item = {
        "key": "0",
        "template": "{name} had {item_1} and {item_2}. Total: ",
        "fields": {"name": "Mia", "item_1": 82, "item_2": 38},
        "shrink_1": True,
    }
    case = paper.sums_case(item, tok, 4)
    assert case.info["correct"] == "1" and case.info["readings"] == ["4"]  # 120; 8 + 38 = 46, 2 + 38 = 40
    prompt = "Mia had 82 and 38. Total: "
    ids, offsets = tok.encode_with_offsets(prompt)
    assert "".join(prompt[offsets[i][0] : offsets[i][1]] for i in case.info["span"]).strip() == "82"
    assert paper.format_with_offsets("{a}-{b}{a}", {"a": 7, "b": "xy"}) == ("7-xy7", {"a": (0, 1), "b": (2, 4)})
    assert paper.format_with_offsets("[{a:>3}]", {"a": 7}) == ("[  7]", {"a": (1, 4)})  # a format spec is applied


def test_a_case_is_the_prompt_shrunk_over_its_span(trained_bpe_json):
    """The second number shrunk: its tokens last c for c in 0.1..1, the digits tracked, and the
    sum and reading recorded for the metrics."""
    from tokenizer import Tokenizer

    tok = Tokenizer.from_file(trained_bpe_json)
    item = {
        "key": "7",
        "template": "{name} had {item_1} and {item_2}. Total: ",
        "fields": {"name": "Mia", "item_1": 82, "item_2": 38},
        "shrink_1": False,
    }
    case = paper.sums_case(item, tok, 4)
    prompt = "Mia had 82 and 38. Total: "
    ids, offsets = tok.encode_with_offsets(prompt)
    assert "".join(prompt[offsets[i][0] : offsets[i][1]] for i in case.info["span"]).strip() == "38"
    assert case.info | {"span": None} == {
        "n": None,
        "span": None,
        "tokens": len(ids),
        "correct": "1",
        "readings": ["8", "9"],
        "sum": 120,
        "shrunk": 38,
    }  # 3 + 82, 8 + 82
    assert case.key == "7" and case.answers == [str(d) for d in range(10)]
    assert case.x == pytest.approx([0.1, 0.4, 0.7, 1.0])
    positions, durations = ex.shrink(len(ids), case.info["span"], torch.tensor(case.x))
    assert case.inputs.keys() == {"tokens", "positions", "durations"} and case.inputs["tokens"].tolist() == ids
    assert torch.equal(case.inputs["positions"], positions) and torch.equal(case.inputs["durations"], durations)


# ----------------------------------------------------------------------------- interpolation metrics


def test_interpolation_metrics_by_hand():
    x = torch.linspace(0, 1, 5)
    probs = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3], [0.6, 0.4]])
    m = paper.interpolation_metrics(x, probs)
    assert m["variations"] == pytest.approx([0.3, 0.3])  # 0.9 over the top of 0.6; 0.1 under 0.4
    assert m["lipschitz"][0] == pytest.approx(0.4 / 0.25 / 0.7)  # steepest 0.4 per 0.25, range 0.7
    assert m["variation"] == pytest.approx(0.3)
    assert m["lipschitz_max"] == pytest.approx(max(m["lipschitz"])) and m["lipschitz_max"] > 1
    flat = paper.interpolation_metrics(x, torch.full((5, 2), 0.5))
    assert flat["variation"] == 0 and math.isnan(flat["lipschitz_max"])


def test_interpolation_metrics_on_an_uneven_grid_and_a_falling_curve():
    """The slope is per unit of x (not per sample), normalised by the curve's range (not by the
    difference of its ends) and multiplied by the x range; the variation measures how far the
    curve leaves the band between its two ends, above or below, for a falling curve too."""
    x = torch.tensor([0.0, 0.1, 0.5, 1.0])
    y = torch.tensor([0.9, 0.95, 0.3, 0.4])  # falls from 0.9 to 0.4; overshoots above (0.95) and below (0.3)
    m = paper.interpolation_metrics(x, torch.stack((y, 1 - y), 1))
    assert m["variations"][0] == pytest.approx(0.1)  # 0.4 - 0.3 below the band, more than 0.95 - 0.9 above
    # steepest: 0.65 over 0.4 of x = 1.625 per unit; range 0.65; x range 1: 1.625 / 0.65 = 2.5
    # (per sample it would be 0.65 / 0.65 * 3 = 3; by the ends' difference 1.625 / 0.5 = 3.25)
    assert m["lipschitz"][0] == pytest.approx(2.5)
    assert ex.variation([0.2, 0.5, 0.8]) == 0 and ex.normalized_lipschitz([0, 1, 2], [0.2, 0.5, 0.8]) == pytest.approx(1.0)


def test_interpolation_summary_by_kind():
    records = [
        {"key": "0-first", "info": {"kind": "first"}, "metrics": {"variation": 0.1, "lipschitz_max": 2.0}},
        {"key": "1-first", "info": {"kind": "first"}, "metrics": {"variation": 0.0, "lipschitz_max": float("nan")}},
        {"key": "0-both", "info": {"kind": "both"}, "metrics": {"variation": 0.02, "lipschitz_max": 1.0}},
    ]
    s = paper.summarize("interpolation", records)
    assert s["mean_variation"] == pytest.approx(0.04) and s["share_variation_over_0.05"] == pytest.approx(1 / 3)
    assert s["mean_lipschitz_by_kind"] == {"first": 2.0, "both": 1.0} and s["flat_items"] == 1
    two = records + [{"key": "2-both", "info": {"kind": "both"}, "metrics": {"variation": 0.05, "lipschitz_max": 3.0}}]
    s = paper.summarize("interpolation", two)
    assert s["mean_lipschitz_by_kind"]["both"] == pytest.approx(2.0)  # the mean of 1 and 3
    assert s["share_variation_over_0.05"] == pytest.approx(2 / 4)  # 0.1 and exactly 0.05 count: at least 0.05
    only_flat = paper.summarize("interpolation", records[1:2])  # a kind whose every item is flat: NaN, not an error
    assert math.isnan(only_flat["mean_lipschitz_by_kind"]["first"]) and only_flat["flat_items"] == 1


# ----------------------------------------------------------------------------- datasets


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_official_formats(tmp_path):
    counting = write(tmp_path, "w.json", [{"word": "mall", "category": "place", "category_with_article": "a place", "repetitions": 4}])
    assert paper.load_items("counting", counting) == [
        {"word": "mall", "category": "place", "category_with_article": "a place", "repetitions": 4, "key": "0"}
    ]
    sums = write(
        tmp_path,
        "s.json",
        [{"template": "{name} {item_1} {item_2}", "fields": {"name": "A", "item_1": 10, "item_2": 20}, "shrink_1": i % 2 == 0} for i in range(250)],
    )
    assert len(paper.load_items("sums", sums)) == 200  # the paper uses the first 200
    pairs = [{"options": ["a", "b"], "questions": {k: k + " {}?" for k in paper.QUESTION_KINDS}}] * 54
    items = paper.load_items("interpolation", write(tmp_path, "e.json", pairs))
    assert len(items) == 200 and items[1]["kind"] == "neither" and items[1]["key"] == "0-neither"


def test_malformed_datasets_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"item 1 has no num_sentences of type int \(a events item needs sentence, num_sentences\)$"):
        paper.load_items("events", write(tmp_path, "e.json", [{"sentence": "x", "num_sentences": 3}, {"sentence": "y"}]))
    with pytest.raises(ValueError, match="a JSON list of items, not dict$"):
        paper.load_items("counting", write(tmp_path, "d.json", {"word": "x"}))
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        paper.load_items("sums", tmp_path / "missing.json")
    with pytest.raises(ValueError, match="^unknown task 'poetry'; choose one of counting, events, sums, interpolation$"):
        paper.load_items("poetry")


def test_events_steps_must_match(trained_bpe_json):
    from tokenizer import Tokenizer

    tok = Tokenizer.from_file(trained_bpe_json)
    text = "Tutorial: How to X\n\n- Do a.\n- Do b.\n\nQuestion: How many steps? Answer: It takes "
    case = paper.events_case({"key": "0", "sentence": text, "num_sentences": 2}, tok, 3)
    covered = tok.decode([tok.encode(text)[i] for i in case.info["span"]])
    assert covered.strip() == "- Do a.\n- Do b."
    with pytest.raises(ValueError, match="num_sentences is 3 but the tutorial lists 2 steps"):
        paper.events_case({"key": "0", "sentence": text, "num_sentences": 3}, tok, 3)
    for n in (1, 9, 10):  # one digit answers 1 to 9 steps
        steps = "".join(f"- Do {chr(97 + k)}.\n" for k in range(n))
        item = {"key": "0", "sentence": f"Tutorial:\n\n{steps}\nHow many steps? ", "num_sentences": n}
        if n == 10:
            with pytest.raises(ValueError, match="^10 steps cannot be answered with a single digit$"):
                paper.events_case(item, tok, 3)
            continue
        case = paper.events_case(item, tok, 3)
        covered = tok.decode([tok.encode(item["sentence"])[i] for i in case.info["span"]])
        assert covered.strip() == steps.strip() and case.info["n"] == n  # from the first step to the end of the last


def test_builtin_datasets_have_the_official_shape():
    for task, size in (("counting", 200), ("events", 200), ("sums", 200), ("interpolation", 200)):
        items = paper.load_items(task)
        assert len(items) == size and len({i["key"] for i in items}) == size
    assert sorted({i["num_sentences"] for i in paper.load_items("events")}) == [3, 4, 5, 6, 7]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def default_model():
    from load import fetch_model, load

    os.environ["CONTGPT_CACHE"] = str(CACHE)
    fetch_or_skip(lambda: fetch_model("qwen2.5-0.5b"))
    return load("qwen2.5-0.5b", dtype="float32")


def point_by_point(model, tokenizer, case) -> torch.Tensor:
    """The tracked answers' probabilities (N, A) of a case, one plain forward per sweep point: the
    reference for the sweep engine's batches and shared prefixes."""
    rows = []
    for i in range(len(case.x)):
        inputs = {k: v[i] if v.dim() == (3 if k == "embeds" else 2) else v for k, v in case.inputs.items()}
        rows.append(model(**inputs, last_only=True)[0, -1])
    return ex.answer_probs(torch.stack(rows), tokenizer, case.answers)[0]


def interpolation_bounds(x, curves: torch.Tensor, eps: float) -> dict:
    """How far the interpolation metrics can move when every probability of curves (points,
    answers) moves by at most eps. The variation (a largest difference of two probabilities) by
    2 eps. The normalised Lipschitz estimate L = X S / R (X the x range, S the steepest slope, R
    the curve's range) by (X a + L b) / (R - b), a = 2 eps / (smallest x step), b = 2 eps, since
    S moves by at most a and R by at most b; the largest over the curves, as for their maximum.
    A curve nearly as flat as eps bounds nothing (inf): its estimate divides rounding by rounding."""
    x = torch.as_tensor(x, dtype=torch.float64)
    a, b = 2 * eps / (x[1:] - x[:-1]).min().item(), 2 * eps
    X = (x[-1] - x[0]).item()
    lipschitz = 0.0
    for y in curves.double().T:
        spread, slope = (y.max() - y.min()).item(), ((y[1:] - y[:-1]) / (x[1:] - x[:-1])).abs().max().item()
        lipschitz = max(lipschitz, (X * a + X * slope / spread * b) / (spread - b) if spread > b else math.inf)
    return {"variation": 2 * eps, "lipschitz_max": lipschitz}


def metrics_of(task, case, probs):
    if task in ("counting", "events"):
        m = paper.counting_metrics(probs, case.info["n"])
        return {k: paper.area(v) for k, v in m.items() if k != "peak_rate"} | {"peak_rate": m["peak_rate"]}
    if task == "sums":
        return paper.sums_metrics(probs, case.info["correct"], case.info["readings"])
    m = paper.interpolation_metrics(case.x, probs)
    return {"variation": m["variation"], "lipschitz_max": m["lipschitz_max"]}


def same(a, b) -> bool:
    """Equal, numbers to 1e-9 with NaN equal to NaN, through dicts and lists (a summary's values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-9)
    return a == b


@pytest.mark.slow  # the real default model, four tasks end to end
@pytest.mark.parametrize("task", paper.TASKS)
def test_reproduce_end_to_end_and_resume(task, tmp_path, default_model):
    """The command's records hold what the model says (each sweep point recomputed here by a
    plain forward) and the metrics of it; the summary is of those records; a rerun resumes."""
    command = [
        sys.executable,
        str(ROOT / "demos" / "reproduce.py"),
        "--task",
        task,
        "--limit",
        "3",
        "--samples",
        "5",
        "--dtype",
        "float32",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "CONTGPT_CACHE": str(CACHE)}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    log = tmp_path / f"{task}_qwen2.5-0.5b_float32_builtin.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 3 and all("metrics" in r for r in records)
    summary = json.loads((tmp_path / f"{task}_qwen2.5-0.5b_float32_builtin.summary.json").read_text())
    assert summary["run"] == 3 and (tmp_path / f"{task}_qwen2.5-0.5b_float32_builtin.png").exists()
    model, tokenizer = default_model
    items = {item["key"]: item for item in paper.load_items(task)}
    for record in records:
        item = items[record["key"]]
        case = paper.interpolation_case(item, model, tokenizer, 5) if task == "interpolation" else getattr(paper, f"{task}_case")(item, tokenizer, 5)
        reference = point_by_point(model, tokenizer, case)
        # stored rounded to 6 decimals; batched against one by one: measured 1.2e-6 at most
        assert torch.tensor(record["probs"]) == pytest.approx(reference, abs=1e-5)
        expected = metrics_of(task, case, reference)
        recorded = record["metrics"]
        if task in ("counting", "events"):
            recorded = {k: paper.area(v) for k, v in recorded.items() if k != "peak_rate"} | {"peak_rate": recorded["peak_rate"]}
        elif task == "interpolation":
            recorded = {"variation": recorded["variation"], "lipschitz_max": recorded["lipschitz_max"]}
            # the command's metrics are of its own probabilities, which the stored ones round to 6
            # decimals: within eps of the reference's, and the metrics within what eps can move them
            eps = (torch.tensor(record["probs"]) - reference).abs().max().item() + 5e-7
            for name, bound in interpolation_bounds(case.x, reference, eps).items():
                assert abs(recorded[name] - expected[name]) <= bound or same(recorded[name], expected[name]), (name, recorded, expected, bound)
            continue
        # areas and rates of thresholds crossed: unchanged unless a probability lies within 1e-5 of a threshold
        assert recorded == pytest.approx(expected, rel=1e-4, abs=1e-6, nan_ok=True)
    assert same(
        summary, paper.summarize(task, records) | {k: summary[k] for k in ("task", "model", "dtype", "dataset", "samples", "ranks", "seconds")}
    )
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert "3 already done, 0 to run" in again.stdout and len(log.read_text().splitlines()) == 3
    table = subprocess.run([*command[:2], "--table", "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert f"`python demos/reproduce.py --task {task} --model qwen2.5-0.5b --dtype float32 --samples 5` |" in table.stdout


def test_table_names_the_command_of_each_run():
    official = {"task": "events", "model": "qwen2.5-1.5b", "dtype": "bfloat16", "dataset": "counting_events_seq_every10", "samples": 40}
    assert reproduce.command(official) == (
        "python demos/reproduce.py --task events --data counting_events_seq.json --model qwen2.5-1.5b --dtype bfloat16 --stride 10"
    )
    builtin = {"task": "sums", "model": "qwen2.5-0.5b", "dtype": "float32", "dataset": "builtin", "samples": 5}
    assert reproduce.command(builtin) == "python demos/reproduce.py --task sums --model qwen2.5-0.5b --dtype float32 --samples 5"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "interpolation", "--stride", "8"], "would keep one question kind only"),
        (["--task", "counting", "--stride", "0"], "--stride and --limit must be at least 1"),
        (["--task", "sums", "--limit", "-1"], "--stride and --limit must be at least 1"),
    ],
)
def test_bad_subsets_are_refused(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        reproduce.main([*args, "--out", str(tmp_path)])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything ran
