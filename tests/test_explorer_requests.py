"""The explorer's request checks, called directly (no HTTP): every bound at its edge (the last
value accepted, the first refused, with the message the page shows), the sweep's plan (which
durations it sweeps, where the tokens are placed) and the text offsets in UTF-16 units. A tiny
random model stands in for the default one; these run in the quick tier."""

import math

import pytest
import torch

from conftest import tiny_explorer_model
from demos import explore
from tokenizer import Tokenizer

BadRequest = explore.BadRequest
PROMPT = "apple apple apple"


@pytest.fixture(scope="module")
def explorer(trained_bpe_json):
    tokenizer = Tokenizer.from_file(trained_bpe_json)
    return explore.Explorer(tiny_explorer_model(tokenizer, 0.1), tokenizer, "tiny")  # 2 layers, 4 heads


def body(**changes):
    return {"prompt": PROMPT, "answers": ["1", "2"], "layer": 0, **changes}


def n_tokens(explorer, prompt=PROMPT):
    return len(explorer.tokenizer.encode(prompt))


def refused(call, message):
    with pytest.raises(BadRequest) as caught:
        call()
    assert str(caught.value) == message


# ----------------------------------------------------------------------------- the prediction's request


def test_a_plain_request_is_read_as_sent(explorer):
    T = n_tokens(explorer)
    request = explorer.parse(body(answers=[" 1 ", "yes|Yes"], layer=1, head=3, keep_positions=True))
    assert request.prompt == PROMPT and request.ids == explorer.tokenizer.encode(PROMPT)
    assert request.durations == [1.0] * T  # none sent: every token lasts 1
    assert request.answers == ["1", "yes|Yes"] and (request.layer, request.head) == (1, 3)
    assert request.keep_positions is True and request.interpolation is None
    assert explorer.parse(body()).head is None and explorer.parse(body()).keep_positions is False


@pytest.mark.parametrize("prompt", [None, "", 7, "x" * 4001])
def test_the_prompt_is_a_text_of_bounded_length(explorer, prompt):
    refused(lambda: explorer.parse(body(prompt=prompt)), "prompt must be a text of 1 to 4000 characters")


def test_a_prompt_of_the_most_characters_is_read(explorer):
    with pytest.raises(BadRequest, match="^the prompt has [0-9]+ tokens; the explorer takes at most 512$"):
        explorer.parse(body(prompt="apple " * 666 + "pear"))  # 4000 characters: past that check, not this one


def test_the_prompt_s_tokens_are_bounded():
    explore._check_length([0] * 512)
    refused(lambda: explore._check_length([0] * 513), "the prompt has 513 tokens; the explorer takes at most 512")


def test_durations_are_one_number_per_token_within_bounds(explorer):
    T = n_tokens(explorer)
    assert explorer.parse(body(durations=[0, 100.0] + [1] * (T - 2))).durations == [0.0, 100.0] + [1.0] * (T - 2)
    for wrong in ([1.0] * (T - 1), [1.0] * (T + 1), "1"):
        refused(lambda: explorer.parse(body(durations=wrong)), f"durations must be a list of {T} numbers, one per token of the prompt")
    for bad in (-0.001, 100.001, math.nan, math.inf, True, "1", None):
        refused(lambda: explorer.parse(body(durations=[1.0, bad] + [1.0] * (T - 2))), f"durations[1] = {bad!r} is not a number in [0, 100]")


def test_answers_are_a_bounded_list_of_short_texts(explorer):
    assert len(explorer.parse(body(answers=[str(i) for i in range(20)])).answers) == 20
    assert explorer.parse(body(answers=["x" * 32])).answers == ["x" * 32]
    for wrong in (None, "1, 2", [str(i) for i in range(21)]):
        refused(lambda: explorer.parse(body(answers=wrong)), "answers must be a list of up to 20 texts (alternatives joined by |)")
    for wrong in ([""], ["  "], [3], ["x" * 33]):
        refused(lambda: explorer.parse(body(answers=wrong)), "each answer must be a text of 1 to 32 characters")


def test_layer_and_head_are_integers_within_the_model(explorer):
    assert explorer.parse(body(layer=1, head=0)).layer == 1
    assert explorer.parse(body(head=3)).head == 3
    for bad in (-1, 2, 0.5, True, None, "0"):
        refused(lambda: explorer.parse(body(layer=bad)), f"layer must be an integer in [0, 1], not {bad!r}")
    for bad in (-1, 4, 1.0):
        refused(lambda: explorer.parse(body(head=bad)), f"head must be an integer in [0, 3], not {bad!r}")


# ----------------------------------------------------------------------------- interpolation


def interpolation(**changes):
    return {"start": 6, "end": 11, "other": "pear", "alpha": 0.25, **changes}  # the second "apple"


def test_an_interpolation_is_read_in_code_points(explorer):
    spec = explorer.parse(body(interpolation=interpolation())).interpolation
    assert spec == {"start": 6, "end": 11, "other": "pear", "alpha": 0.25, "method": "linear"}
    assert explorer.parse(body(interpolation=interpolation(alpha=1, method="slerp"))).interpolation["method"] == "slerp"
    prompt = "🍎 apple {x}"  # the emoji takes two UTF-16 units: the page's 3..8 are Python's 2..7
    request = explorer.parse(body(prompt=prompt, interpolation=interpolation(start=3, end=8)))
    assert (request.interpolation["start"], request.interpolation["end"]) == (2, 7)
    assert explorer.word(request) == "apple"
    assert explorer.template(request) == "🍎 {} {{x}}"  # the prompt's own braces escaped


def test_interpolation_bounds(explorer):
    L = len(PROMPT)
    parse = lambda **changes: explorer.parse(body(interpolation=interpolation(**changes)))
    refused(lambda: explorer.parse(body(interpolation=[6, 11])), "interpolation must be an object {start, end, other, alpha, method}")
    refused(lambda: parse(start=0, end=0), "select the word to interpolate: click its token in the timeline")
    assert parse(start=0, end=L).interpolation["end"] == L
    refused(lambda: parse(start=L + 1, end=L + 2), f"start must be an integer in [0, {L}], not {L + 1}")
    refused(lambda: parse(end=L + 1), f"end must be an integer in [7, {L}], not {L + 1}")
    refused(lambda: parse(end=6), f"end must be an integer in [7, {L}], not 6")  # at least one character
    for other in (None, "", " ", "x" * 65):
        refused(lambda: parse(other=other), "the second word must be a text of 1 to 64 characters")
    assert parse(other="x" * 64).interpolation["other"] == "x" * 64
    refused(lambda: parse(method="cubic"), "method must be linear or slerp")
    for alpha in (-0.01, 1.01, math.nan):
        refused(lambda: parse(alpha=alpha), f"alpha must be a number in [0, 1], not {alpha!r}")
    refused(
        lambda: explorer.parse(body(prompt="🍎 apple", interpolation=interpolation(start=1, end=4))),
        "start = 1 falls inside a character (UTF-16 offsets must be at character boundaries)",
    )
    refused(
        lambda: explorer.parse(body(prompt="apple 🍎", interpolation=interpolation(start=0, end=7))),
        "end = 7 falls inside a character (UTF-16 offsets must be at character boundaries)",
    )


def test_utf16_units_count_two_only_past_the_basic_plane():
    assert explore.utf16_units("a\uffff\U00010000b") == [0, 1, 2, 4, 5]  # U+FFFF: one unit; U+10000: two


# ----------------------------------------------------------------------------- the sweep's plan


def test_a_duration_sweep_sets_the_selected_tokens_and_places_the_rest(explorer):
    T = n_tokens(explorer)
    durations = [1.0] * T
    durations[-1] = 0.5
    request, xs, build = explorer.sweep_plan(body(durations=durations, selected=[2, 1, 2], low=0.2, high=1.6, points=3))
    inputs = build()
    assert xs.tolist() == pytest.approx([0.2, 0.9, 1.6])
    expected = torch.tensor([durations] * 3)
    expected[:, [1, 2]] = xs[:, None]
    assert torch.equal(inputs["durations"], expected)  # only the selected tokens, each point its value
    assert torch.equal(inputs["positions"], expected.cumsum(1) - 1)  # later tokens move
    assert inputs["tokens"].tolist() == request.ids
    kept = explorer.sweep_plan(body(selected=[1], low=0.2, high=1.6, points=4, keep_positions=True))[2]()
    assert torch.equal(kept["positions"], torch.arange(T, dtype=torch.float32).expand(4, T))  # or stay where they were
    assert kept["positions"].dtype == inputs["positions"].dtype == torch.float32


def test_proposed_answers_are_distinct_short_texts_that_can_be_typed_back():
    """The page shows them comma-separated in a field where | joins alternatives."""
    texts = [" 2", "2", " a|b", "x,y", "", "  ", "x" * 33, "y" * 32, " 3"]
    assert explore._proposals(texts) == ["2", "y" * 32, "3"]
    assert explore._proposals(["", " a|b"]) == [""]  # nothing usable: the top token as it is


def test_an_interpolation_sweep_runs_alpha_from_0_to_1(explorer):
    request, xs, build = explorer.sweep_plan(body(interpolation=interpolation(), points=5))
    inputs = build()
    assert xs.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert inputs["embeds"].shape[0] == 5
    first, last = explorer.inputs(request, [0.0])[0], explorer.inputs(request, [1.0])[0]
    assert torch.equal(inputs["embeds"][0], first["embeds"][0]) and torch.equal(inputs["embeds"][-1], last["embeds"][0])


def test_sweep_bounds(explorer):
    plan = lambda **changes: explorer.sweep_plan(body(**{"selected": [1], "low": 0.1, "high": 1.0, "points": 10, **changes}))
    T = n_tokens(explorer)
    assert len(plan(points=2)[1]) == 2 and len(plan(points=200)[1]) == 200
    for bad in (1, 201, 10.0, None):
        refused(lambda: plan(points=bad), f"points must be an integer in [2, 200], not {bad!r}")
    assert plan(low=0, high=100)[1].tolist()[::9] == [0.0, 100.0]
    refused(lambda: plan(low=-0.5), "low must be a number in [0, 100], not -0.5")
    refused(lambda: plan(high=100.5), "high must be a number in [0, 100], not 100.5")
    refused(lambda: plan(answers=[]), "a sweep tracks answers: type them (comma-separated) before sweeping")
    refused(lambda: plan(selected=[]), "select the tokens whose duration the sweep changes")
    assert plan(selected=list(range(T)))[2]()["durations"].shape == (10, T)
    for wrong in (None, 1, list(range(T + 1))):
        refused(lambda: plan(selected=wrong), "selected must be a list of token indices")
    for bad in (T, -1, True, "1", 1.0):
        refused(lambda: plan(selected=[0, bad]), f"selected token index {bad!r} is not a token of the prompt (0 to {T - 1})")


def test_the_sweep_work_cap_is_points_times_tokens(explorer, monkeypatch):
    T = n_tokens(explorer)
    monkeypatch.setattr(explore, "MAX_SWEEP_WORK", 10 * T)
    assert len(explorer.sweep_plan(body(selected=[0], low=0.1, high=1.0, points=10))[1]) == 10  # exactly the cap
    refused(
        lambda: explorer.sweep_plan(body(selected=[0], low=0.1, high=1.0, points=11)),
        f"a sweep of 11 points over {T} tokens is more than the explorer runs at once ({10 * T:,} points x tokens); "
        "use fewer points or a shorter prompt",
    )


def test_an_interpolation_sweep_is_capped_before_its_embeddings_are_built(explorer, monkeypatch):
    T = n_tokens(explorer)
    monkeypatch.setattr(explore, "MAX_SWEEP_WORK", 10 * T)
    assert len(explorer.sweep_plan(body(interpolation=interpolation(), points=10))[1]) == 10  # exactly the cap
    monkeypatch.setattr(explorer, "inputs", lambda *args: pytest.fail("inputs built for a sweep past the cap"))
    refused(
        lambda: explorer.sweep_plan(body(interpolation=interpolation(), points=11)),
        f"a sweep of 11 points over {T} tokens is more than the explorer runs at once ({10 * T:,} points x tokens); "
        "use fewer points or a shorter prompt",
    )


HUGE = 10**400  # json.loads reads it as an int; math.isfinite would raise OverflowError on it


@pytest.mark.parametrize("field", ["layer", "head", "points", "low", "high"])
def test_an_integer_of_any_size_is_a_clear_400(explorer, field):
    sweep = {"selected": [0], "low": 0.1, "high": 1.0, "points": 5}
    kind = "an integer" if field in ("layer", "head", "points") else "a number"
    with pytest.raises(BadRequest, match=f"^{field} must be {kind} in .*, not an integer of 401 digits$"):
        explorer.sweep_plan(body(**{**sweep, field: HUGE}))
    for name in ("start", "end", "alpha"):
        with pytest.raises(BadRequest, match=f"^{name} must be .*, not an integer of 401 digits$"):
            explorer.parse(body(interpolation={**interpolation(), name: HUGE}))
    with pytest.raises(BadRequest, match=r"^durations\[0\] = an integer of 401 digits is not a number"):
        explorer.parse(body(durations=[HUGE] + [1.0] * (n_tokens(explorer) - 1)))


@pytest.mark.parametrize("value", ["false", 0, 1, None, "true"])
def test_keep_positions_is_a_json_boolean(explorer, value):
    refused(lambda: explorer.parse(body(keep_positions=value)), f"keep_positions must be true or false, not {value!r}")


def test_per_client_state_ends_with_its_newest_request(explorer):
    for k in range(300):
        assert explorer.run(f"page-{k}", lambda: k) == k
    with pytest.raises(ZeroDivisionError):
        explorer.run("failing", lambda: 1 / 0)
    assert explorer.latest == {}


def test_a_waiting_sweep_holds_no_embeddings(explorer, monkeypatch):
    """The plan checks one point (a word the swap cannot align is a 400 at once); every point's
    embeddings are built only when the sweep runs, under the model's lock."""
    built = []
    original = explorer.inputs
    monkeypatch.setattr(explorer, "inputs", lambda request, alphas: built.append(len(alphas)) or original(request, alphas))
    request, xs, build = explorer.sweep_plan(body(interpolation=interpolation(), points=200))
    assert built == [1]
    assert build()["embeds"].shape[0] == 200 and built == [1, 200]


def test_one_rule_for_text_in_every_endpoint(explorer):
    """Half of a UTF-16 pair, which JSON can carry: the same 400 from every endpoint that reads text."""
    lone = "apple \ud800 apple"
    message = "prompt holds a lone surrogate at character 6 (half of a UTF-16 pair); send valid Unicode text"
    for endpoint in (explorer.tokenize, explorer.parse, explorer.predict, explorer.sweep_plan):
        refused(lambda: endpoint(body(prompt=lone, selected=[0], points=2, low=0.5, high=1)), message)
    refused(lambda: explorer.parse(body(answers=["1", "\udc00"])), message.replace("prompt", "answers[1]").replace("character 6", "character 0"))
    refused(
        lambda: explorer.parse(body(interpolation=interpolation(other="pe\ud800r"))),
        message.replace("prompt", "the second word").replace("character 6", "character 2"),
    )
