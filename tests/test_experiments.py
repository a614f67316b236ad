"""The experiment toolkit on small tokenizers and tiny models: spans, timelines, answers,
interpolation, metrics, plots, and a batched sweep against the same points one by one."""

import json
import math
import re

import pytest
import torch

import experiments as ex
from conftest import VOCAB, assert_close, varied_strings
from demos import cli
from load import load
from sweep import last_logits
from tokenizer import Tokenizer


@pytest.fixture(scope="module", params=["sentencepiece", "bpe"])
def tokenizer(request, trained_spm, trained_bpe_json):
    return Tokenizer.from_file(trained_spm if request.param == "sentencepiece" else trained_bpe_json)


# ----------------------------------------------------------------------------- spans


def test_offsets_cover_the_text_in_order(tokenizer):
    for text in varied_strings(120):
        ids, offsets = tokenizer.encode_with_offsets(text, bos=False)
        assert len(ids) == len(offsets)
        assert all(a <= b for a, b in offsets) and all(p[0] <= q[0] for p, q in zip(offsets, offsets[1:]))
        assert ids == tokenizer.encode(text, bos=False)
        if offsets:  # together the tokens cover every character of the text
            covered = {i for a, b in offsets for i in range(a, b)}
            assert covered >= {i for i, ch in enumerate(text) if not ch.isspace()}


def test_a_word_inside_a_longer_word_is_not_found():
    text = "Alexander and Sandra landed and stayed"
    assert [text[a:b] for a, b in ex.word_ranges(text, "and")] == ["and", "and"]
    assert [a for a, _ in ex.word_ranges(text, "and")] == [10, 28]


def test_span_of_repeated_words(tokenizer):
    text = 'Question: In the sentence "apple apple apple apple", how many?'
    at = text.index("apple")
    ids, span = ex.span_of(tokenizer, text, [(at + a, at + b) for a, b in ex.word_ranges(text[at:], "apple")])
    assert tokenizer.decode([ids[i] for i in span]).strip() == "apple apple apple apple"
    assert span == list(range(span[0], span[-1] + 1))  # nothing between the apples is left out


def test_span_of_a_word_split_over_several_tokens(tokenizer):
    text = "We saw a Xylophonistically tuned bell."
    at = text.index("Xylophonistically")
    ids, span = ex.span_of(tokenizer, text, [(at, at + len("Xylophonistically"))])
    assert len(span) > 1
    assert tokenizer.decode([ids[i] for i in span]).strip() == "Xylophonistically"


def test_span_of_a_multibyte_character_takes_all_its_tokens(tokenizer):
    text = "price: 😀 today"
    at = text.index("😀")
    ids, span = ex.span_of(tokenizer, text, [(at, at + 1)])
    assert "😀" in tokenizer.decode([ids[i] for i in span])


def test_covering_tokens_errors():
    with pytest.raises(ValueError, match="empty"):
        ex.covering_tokens([(0, 3)], 2, 2)
    with pytest.raises(ValueError, match="no token covers"):
        ex.covering_tokens([(0, 3)], 5, 7)
    assert ex.covering_tokens([(0, 3), (3, 5)], 0, 1) == [0]  # a range from the first character is fine


# ----------------------------------------------------------------------------- timelines


def test_shrink_keeps_positions_before_and_shifts_after():
    positions, durations = ex.shrink(6, [2, 3], [0.5, 1.0])
    assert durations.tolist() == [[1, 1, 0.5, 0.5, 1, 1], [1] * 6]
    assert positions.tolist() == [[0, 1, 1.5, 2, 3, 4], [0, 1, 2, 3, 4, 5]]


def test_shift_and_scale():
    positions, durations = ex.shift(4, [0.0, 2.5])
    assert positions.tolist() == [[0, 1, 2, 3], [2.5, 3.5, 4.5, 5.5]] and durations.tolist() == [[1] * 4] * 2
    positions, durations = ex.scale(4, [0.5])
    assert positions.tolist() == [[0, 0.5, 1, 1.5]] and durations.tolist() == [[1] * 4]


def test_timelines_from_whole_numbers_are_float32():
    """Integer factors, shifts and positions (a user's [1, 2]) give float32 timelines the model takes."""
    for positions, durations in (ex.shrink(3, [1], [1, 2]), ex.shift(3, [1, 2]), ex.scale(3, [1, 2])):
        assert positions.dtype == durations.dtype == torch.float32
    assert ex.shift(3, [1])[0].tolist() == [[1.0, 2.0, 3.0]] and ex.scale(3, [2])[0].tolist() == [[0.0, 2.0, 4.0]]
    _, positions, durations = ex.refine([0, 1], [1, 1], 2)
    assert positions.dtype == durations.dtype == torch.float32 and positions.tolist() == [-0.5, 0.0, 0.5, 1.0]


def test_refine_tiles_each_interval():
    index, positions, durations = ex.refine([0.0, 1.0], [1.0, 1.0], 2)
    assert index.tolist() == [0, 0, 1, 1]
    assert positions.tolist() == [-0.5, 0.0, 0.5, 1.0] and durations.tolist() == [0.5] * 4
    index, positions, durations = ex.refine([0.0, 2.0, 3.0], [1.0, 2.0, 1.0], 4, which=[1])
    assert index.tolist() == [0, 1, 1, 1, 1, 2]
    assert positions.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0] and durations.tolist() == [1, 0.5, 0.5, 0.5, 0.5, 1]


# ----------------------------------------------------------------------------- answers


class ListTokenizer(Tokenizer):
    """A vocabulary given as a list of texts."""

    def __init__(self, texts):
        super().__init__(vocab_size=len(texts), bos_id=None, eos_id=None, add_bos=False)
        self.texts = texts

    def _decode(self, ids):
        return "".join(self.texts[i] for i in ids)


def test_answers_match_exact_stripped_text():
    tok = ListTokenizer(["4", " 4", "14", "4.", "know", "no", " No", "\tno", "yes"])
    assert tok.ids_for("4") == [0, 1]
    assert tok.ids_for("no") == [5, 7]  # not "know", not "No"
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.05, 0.05, 0.1, 0.2, 0.1, 0.1, 0.1]]))
    probs, other = ex.answer_probs(logits, tok, ["4", "no", "no|No"])
    assert probs[0].tolist() == pytest.approx([0.3, 0.3, 0.4])
    # "no" and "no|No" overlap: the rest is 1 - p(4, 4, no, No, no) = 0.3, each token counted once
    assert other.item() == pytest.approx(0.3)
    two = torch.log(torch.tensor([[0.1, 0.2, 0.05, 0.05, 0.1, 0.2, 0.1, 0.1, 0.1], [0.6, 0, 0, 0, 0, 0, 0, 0.1, 0.3]]))
    probs, other = ex.answer_probs(two, tok, ["4", "no"])  # each row on its own
    assert probs.flatten().tolist() == pytest.approx([0.3, 0.3, 0.6, 0.1]) and other.tolist() == pytest.approx([0.4, 0.3])
    with pytest.raises(ValueError, match="no token of this vocabulary decodes to 'maybe'"):
        ex.answer_probs(logits, tok, ["maybe"])


def test_curves_top_and_runs():
    curves = ex.Curves([0.1, 0.2, 0.3, 0.4], "c", ["1", "2"], torch.tensor([[0.6, 0.1], [0.5, 0.4], [0.2, 0.7], [0.1, 0.8]]), torch.zeros(4))
    assert curves.top() == ["1", "1", "2", "2"]
    assert curves.runs() == [("1", 0.1, 0.2), ("2", 0.3, 0.4)]
    longer = ex.Curves([0.1, 0.2, 0.3], "c", ["1"], torch.ones(3, 1), torch.zeros(3))
    assert longer.runs() == [("1", 0.1, 0.3)]  # a stretch of three keeps its first x


# ----------------------------------------------------------------------------- metrics


def test_variation():
    assert ex.variation([0.0, 0.3, 0.7, 1.0]) == 0.0  # stays within its endpoints
    assert ex.variation([0.0, 1.2, 1.0]) == pytest.approx(0.2)  # overshoots the top
    assert ex.variation([0.5, -0.1, 1.0]) == pytest.approx(0.6)  # undershoots the bottom
    assert ex.variation([0.4, 0.4, 0.4]) == 0.0


def test_normalized_lipschitz():
    x = torch.linspace(0, 1, 11)
    assert ex.normalized_lipschitz(x, 3 * x + 1) == pytest.approx(1.0)
    step = (x >= 0.5).float()
    assert ex.normalized_lipschitz(x, step) == pytest.approx(10.0)  # a jump of 1 within 0.1
    assert math.isnan(ex.normalized_lipschitz(x, torch.ones(11)))  # flat: 0/0
    assert ex.normalized_lipschitz(x + 2, step) == pytest.approx(10.0)  # the x range, not where it starts


# ----------------------------------------------------------------------------- interpolation


def test_linear_and_slerp_interpolation():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])
    alphas = torch.tensor([0.0, 0.5, 1.0])
    lin = ex.interpolate(a, b, alphas)
    assert torch.allclose(lin[1], torch.tensor([1.5, 0.5]))
    sl = ex.interpolate(a, b, alphas, "slerp")
    assert torch.allclose(sl[0], a) and torch.allclose(sl[2], b)
    assert sl[1].norm().item() == pytest.approx(2.0)  # norms interpolate linearly: (3 + 1) / 2
    assert torch.allclose(sl[1] / sl[1].norm(), torch.tensor([1.0, 1.0]) / math.sqrt(2))  # halfway in angle
    same = ex.interpolate(a, 2 * a, alphas, "slerp")  # parallel vectors: no division by sin 0
    assert torch.allclose(same[1], 1.5 * a)


def test_slerp_turns_each_row_at_a_constant_angular_speed():
    """Rows of several norms and angles, at alphas that separate slerp from a normalised lerp
    (which agree at 0.5 by symmetry): each row's norm moves linearly and its direction turns by
    alpha times the angle between the rows, in the plane of the two."""
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 2.0], [-1.0, 1.0, 0.5]])
    alphas = [0.0, 0.25, 0.8, 1.0]
    out = ex.interpolate(a, b, alphas, "slerp")
    assert out.shape == (4, 3, 3)
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)
    omega = torch.arccos((unit(a) * unit(b)).sum(-1))  # (3,) the angle of each row pair
    for k, alpha in enumerate(alphas):
        assert_close(out[k].norm(dim=-1), (1 - alpha) * a.norm(dim=-1) + alpha * b.norm(dim=-1), 1e-5)
        assert_close(torch.arccos((unit(out[k]) * unit(a)).sum(-1).clamp(-1, 1)), alpha * omega, 1e-3)  # arccos near 0 loses digits
        assert_close(torch.arccos((unit(out[k]) * unit(b)).sum(-1).clamp(-1, 1)), (1 - alpha) * omega, 1e-3)
    assert_close(out[0], a, 1e-6)
    assert_close(out[-1], b, 1e-6)


def test_slerp_of_rows_that_share_a_direction_is_finite_and_opposite_rows_are_refused():
    a = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))  # its unit vector's dot with itself rounds to 1 + 2.4e-7
    out = ex.interpolate(a, 3 * a, [0.0, 0.3, 1.0], "slerp")
    assert torch.isfinite(out).all()
    assert_close(out[1], 1.6 * a, 1e-5)
    with pytest.raises(ValueError, match="^slerp is undefined between opposite directions .* use linear$"):
        ex.interpolate(a, -2 * a, [0.5], "slerp")
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'; choose linear or slerp"):
        ex.interpolate(a, a, [0.5], "cubic")


def test_align_words_of_different_lengths():
    a, b = torch.eye(5)[:2], torch.eye(5)[2:]  # 2 tokens against 3
    seg_a, seg_b, durations = ex.align(a, b)
    assert durations.tolist() == pytest.approx([1 / 3, 1 / 6, 1 / 6, 1 / 3])
    assert seg_a.argmax(1).tolist() == [0, 0, 1, 1] and seg_b.argmax(1).tolist() == [2, 3, 3, 4]
    seg_a, seg_b, durations = ex.align(a[:1], b[:1])
    assert durations.tolist() == [1.0]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load(tiny_dir("qwen2"), dtype="float32")[0]


class WordTokenizer:
    """Whitespace-separated words of a fixed list, one token each."""

    add_bos = False

    def __init__(self, words):
        self.words = words

    def encode(self, text, bos=True):
        return [self.words.index(w) for w in text.split()]


def test_word_swap_endpoints_are_the_two_prompts(tiny):
    """Words of one token each: one segment of duration 1, and the interpolation's endpoints
    are exactly the embeddings of the two discrete prompts."""
    tok = WordTokenizer(["Question:", "Are", "apples", "tomatoes", "red?", "Answer:"])
    template = "Question: Are {} red? Answer:"
    swap = ex.word_swap(tiny, tok, template, "apples", "tomatoes")
    assert len(swap.seg_a) == 1 and swap.durations.tolist() == [1.0] * 5
    embeds = swap.embeds([0.0, 1.0])
    for k, word in enumerate(["apples", "tomatoes"]):
        assert torch.equal(embeds[k], tiny.embed(torch.tensor(tok.encode(template.format(word)))))
    middle = swap.embeds([0.3], "slerp")[0, len(swap.left)]  # the method reaches the word's rows
    assert torch.equal(middle, ex.interpolate(swap.seg_a, swap.seg_b, [0.3], "slerp")[0, 0])
    assert not torch.allclose(middle, ex.interpolate(swap.seg_a, swap.seg_b, [0.3])[0, 0])


def _within(tok, vocab):
    """The trained tokenizer with ids folded into the tiny model's vocabulary."""

    class Folded:
        add_bos = False

        def encode(self, text, bos=True):
            return [i % vocab for i in tok.encode(text, bos)]

    return Folded()


@pytest.mark.parametrize("template", ["{} are red?", "Are they {}", "Are {} and apples red? Answer:"])
def test_word_swap_anywhere_in_the_prompt(tiny, template):
    """The word first (no shared rows before it), last (none after), or followed by several
    shared tokens: the endpoints are exactly the two prompts, the shared rows the context's."""
    tok = WordTokenizer(["Are", "they", "and", "apples", "pears", "tomatoes", "red?", "Answer:", "are"])
    swap = ex.word_swap(tiny, tok, template, "pears", "tomatoes")
    embeds = swap.embeds([0.0, 1.0])
    for k, word in enumerate(["pears", "tomatoes"]):
        assert torch.equal(embeds[k], tiny.embed(torch.tensor(tok.encode(template.format(word)))))
    before = template.split().index("{}")
    assert (len(swap.left), len(swap.right)) == (before, len(template.split()) - before - 1)


def test_word_swap_refuses_a_word_that_is_the_other_plus_more(tiny):
    tok = WordTokenizer(["Are", "apples", "pie", "red?", "x", "y"])
    with pytest.raises(ValueError, match="^'apples' and 'apples pie' differ only by tokens that 'apples' lacks in 'Are {} red\\?'"):
        ex.word_swap(tiny, tok, "Are {} red?", "apples", "apples pie")  # one side would be empty
    with pytest.raises(ValueError, match="^'apples pie' and 'apples' differ only by tokens that 'apples' lacks"):
        ex.word_swap(tiny, tok, "Are {} red?", "apples pie", "apples")
    with pytest.raises(ValueError, match="^'x' and 'y x' differ only by tokens that 'x' lacks in '{} x'"):
        ex.word_swap(tiny, tok, "{} x", "x", "y x")  # the shared ending reaches the start of the shorter prompt


def test_word_swap_of_multi_token_words(tiny, trained_bpe_json):
    """A word of several tokens against one of another count: aligned segments, durations 1."""
    tok = _within(Tokenizer.from_file(trained_bpe_json), VOCAB)
    swap = ex.word_swap(tiny, tok, "Is {} red?", "it", "Xylophonistically")
    assert len(swap.seg_a) == len(swap.seg_b) > 1 and swap.durations[len(swap.left) : -len(swap.right)].sum() == pytest.approx(1)
    with pytest.raises(ValueError, match="^'it' and 'it' give the same tokens in 'Is {} red\\?': nothing to interpolate between$"):
        ex.word_swap(tiny, tok, "Is {} red?", "it", "it")


def test_word_swap_takes_braces_in_the_text(tiny):
    """Braces escaped as {{ }} are text, not the word's place: a prompt such as a dict literal
    can be interpolated; a template without exactly one {} is refused, saying how to escape."""
    tok = WordTokenizer(["Is", "{apples}", "{tomatoes}", "{}", "red?"])
    swap = ex.word_swap(tiny, tok, "Is {{{}}} {{}} red?", "apples", "tomatoes")
    assert torch.equal(swap.embeds([0.0])[0], tiny.embed(torch.tensor(tok.encode("Is {apples} {} red?"))))
    for template in ("Is {} {} red?", "Is red?", "Is {0} red?", "Is { red? {}"):
        with pytest.raises(ValueError, match=r"exactly one \{\} for the word \(write other braces as \{\{ and \}\}\)"):
            ex.word_swap(tiny, tok, template, "apples", "tomatoes")


# ----------------------------------------------------------------------------- sweeps and plots


def test_batched_sweep_equals_points_one_by_one(tiny):
    tokens = torch.randint(0, VOCAB, (11,), generator=torch.Generator().manual_seed(0))
    positions, durations = ex.shrink(11, [4, 5, 6], torch.linspace(0.1, 1.5, 7))
    batched = last_logits(tiny, tokens, positions=positions, durations=durations, batch_size=3)
    for i in range(7):
        alone = tiny(tokens, positions=positions[i], durations=durations[i])[0, -1]
        assert_close(batched[i], alone, 2e-5)  # measured 2.2e-6 (2026-12-02)


def small_curves(n_answers=2, n_points=3, **meta):
    """n_points points over x in [0, 1] with n_answers tracked answers "a0", "a1", ...: each starts
    at (i + 1) / 100, the first rising by 0.3 - x / 4 and the last by x / 2, so that the first leads
    at x = 0 and the last from x = 0.5 on."""
    x = torch.linspace(0, 1, n_points)
    probs = torch.stack([(i + 1) / 100 + x / 2 * (i == n_answers - 1) + (0.3 - x / 4) * (i == 0) for i in range(n_answers)], 1)
    return ex.Curves(x.tolist(), "c", [f"a{i}" for i in range(n_answers)], probs, 1 - probs.sum(1), dict(meta))


def drawn(monkeypatch, curves, tmp_path, **options):
    """The axes cli.plot drew (caught on their way to save_figure), after checking it wrote a PNG."""
    figures = []
    save = cli.save_figure
    monkeypatch.setattr(cli, "save_figure", lambda fig, path: figures.append(fig) or save(fig, path))
    path = cli.plot(curves, tmp_path / "new" / "folder" / "x.png", "the title", **options)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    return figures[0].axes[0]


def test_plot_draws_each_answer_and_the_rest_dashed(monkeypatch, tmp_path):
    curves = small_curves(3)
    ax = drawn(monkeypatch, curves, tmp_path)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["a0", "a1", "a2", "other"]
    for i, answer in enumerate(curves.answers):
        assert list(lines[answer].get_xdata()) == curves.x and list(lines[answer].get_ydata()) == curves.probs[:, i].tolist()
        assert lines[answer].get_linestyle() == "-"
    assert list(lines["other"].get_xdata()) == curves.x and list(lines["other"].get_ydata()) == curves.other.tolist()
    assert lines["other"].get_linestyle() == "--" and lines["other"].get_color() == "k"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("c", "probability", "the title")
    assert ax.get_ylim() == (-0.02, 1.02)  # 0 and 1 in view, whatever the curves
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a0", "a1", "a2", "other"]
    assert ax.get_legend()._ncols == 1


def test_plot_shows_only_the_answers_asked_and_a_long_legend_in_two_columns(monkeypatch, tmp_path):
    ax = drawn(monkeypatch, small_curves(3), tmp_path, show=["a2"])
    assert [line.get_label() for line in ax.get_lines()] == ["a2", "other"]
    assert list(ax.get_lines()[0].get_ydata()) == small_curves(3).probs[:, 2].tolist()
    assert drawn(monkeypatch, small_curves(7), tmp_path).get_legend()._ncols == 2
    assert drawn(monkeypatch, small_curves(6), tmp_path).get_legend()._ncols == 1


def test_json_holds_the_curves_and_their_meta(tmp_path):
    curves = small_curves(2, span=[3, 4], prompt="p")
    data = curves.to_dict()
    assert data == {
        "xlabel": "c",
        "x": curves.x,
        "answers": ["a0", "a1"],
        "probs": curves.probs.tolist(),
        "other": curves.other.tolist(),
        "top": ["a0", "a1", "a1"],
        "span": [3, 4],
        "prompt": "p",
    }
    path = cli.save_json(data, tmp_path / "new" / "folder" / "x.json")
    assert cli.save_json(data, tmp_path / "new" / "folder" / "x.json") == path  # again, into the folder it made
    assert path == tmp_path / "new" / "folder" / "x.json" and json.loads(path.read_text()) == data
    assert path.read_text().startswith('{\n "xlabel"')  # indented, one key a line


def test_table_samples_about_the_rows_asked_and_always_the_last_point():
    curves = small_curves(2, 25)
    lines = cli.table(curves, rows=10).splitlines()
    assert lines[:2] == ["       c    a0    a1 other  top", "   0.000 0.310 0.020 0.670  a0"]  # columns 5 wide at least
    assert lines[0].split() == ["c", "a0", "a1", "other", "top"]
    picks = [0, 3, 6, 9, 12, 15, 18, 21, 24]  # every ceil(25 / 10) = 3rd point, the last one included
    assert [float(line.split()[0]) for line in lines[1:]] == [round(curves.x[i], 3) for i in picks]
    for line, i in zip(lines[1:], picks):
        cells = line.split()
        assert cells[1:4] == [f"{v:.3f}" for v in (*curves.probs[i].tolist(), curves.other[i].item())]
        assert cells[4] == curves.top()[i]
    ends = {tuple(m.end() for m in re.finditer(r"\S+", line))[:4] for line in lines}
    assert len(ends) == 1  # the numbers right-aligned under their headings
    assert len(cli.table(small_curves(2, 26), rows=10).splitlines()) == 1 + 10  # ceil(26 / 10) = 3: 0, 3, ..., 24 and 25
    assert len(cli.table(small_curves(2, 3), rows=10).splitlines()) == 1 + 3  # fewer points than rows: all of them
