"""The experiment toolkit on small tokenizers and tiny models: spans, timelines, answers,
interpolation, metrics, plots, and a batched sweep against the same points one by one."""

import math

import pytest
import torch
from conftest import VOCAB, varied_strings

import experiments as ex
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
    with pytest.raises(ValueError, match="no token of this vocabulary decodes to 'maybe'"):
        ex.answer_probs(logits, tok, ["maybe"])


def test_curves_top_and_runs():
    curves = ex.Curves([0.1, 0.2, 0.3, 0.4], "c", ["1", "2"], torch.tensor([[0.6, 0.1], [0.5, 0.4], [0.2, 0.7], [0.1, 0.8]]), torch.zeros(4))
    assert curves.top() == ["1", "1", "2", "2"]
    assert curves.runs() == [("1", 0.1, 0.2), ("2", 0.3, 0.4)]


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


def _within(tok, vocab):
    """The trained tokenizer with ids folded into the tiny model's vocabulary."""

    class Folded:
        add_bos = False

        def encode(self, text, bos=True):
            return [i % vocab for i in tok.encode(text, bos)]

    return Folded()


def test_word_swap_of_multi_token_words(tiny, trained_bpe_json):
    """A word of several tokens against one of another count: aligned segments, durations 1."""
    tok = _within(Tokenizer.from_file(trained_bpe_json), VOCAB)
    swap = ex.word_swap(tiny, tok, "Is {} red?", "it", "Xylophonistically")
    assert len(swap.seg_a) == len(swap.seg_b) > 1 and swap.durations[len(swap.left) : -len(swap.right)].sum() == pytest.approx(1)
    with pytest.raises(ValueError, match="give the same tokens"):
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
        assert (batched[i] - alone).abs().max() <= 1e-4


def test_plot_and_json_are_written(tmp_path):
    curves = ex.Curves([0.0, 0.5, 1.0], "c", ["a", "b"], torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.8]]), torch.tensor([0.0, 0.0, 0.1]))
    png = ex.plot(curves, tmp_path / "x.png", "title")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = ex.save_json(curves.to_dict(), tmp_path / "x.json")
    assert '"top": [' in data.read_text()
    assert "0.500" in ex.table(curves)
