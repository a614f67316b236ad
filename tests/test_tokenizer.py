"""Tokenizers against the `tokenizers` library (test-only reference), string for string."""

import json
import shutil

import pytest
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from conftest import STORIES, llama3_tokenizer_file, needs_stories, varied_strings
from tokenizer import LLAMA3_SPECIALS, QWEN2_PATTERN, BPETokenizer, SentencePieceTokenizer, Tokenizer

STRINGS = varied_strings(240)


def assert_same_ids(ours, reference, strings=STRINGS):
    mismatches = [(s, ours(s), reference(s)) for s in strings if ours(s) != reference(s)]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, first: {mismatches[0]}"


# ----------------------------------------------------------------------------- SentencePiece


def hf_legacy_llama_tokenizer(model_file, folder):
    """transformers' own conversion of a SentencePiece BPE file into a `tokenizers` object,
    with the normalizer of Llama 2's official tokenizer.json (prepend "▁", spaces to "▁"):
    transformers 5's default Metaspace drops the prefix of text that starts with a space."""
    import transformers

    shutil.copy(model_file, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    tk = transformers.AutoTokenizer.from_pretrained(folder).backend_tokenizer
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = None
    return tk


@pytest.mark.parametrize("which", ["trained", pytest.param("stories260K", marks=needs_stories)])
def test_sentencepiece_matches_tokenizers(which, trained_spm, tmp_path):
    path = trained_spm if which == "trained" else STORIES / "tokenizer.model"
    ours = Tokenizer.from_file(path)
    assert isinstance(ours, SentencePieceTokenizer)
    reference = hf_legacy_llama_tokenizer(path, tmp_path)
    assert_same_ids(lambda s: ours.encode(s, bos=False), lambda s: reference.encode(s, add_special_tokens=False).ids)
    assert all(ours.decode(ours.encode(s)) == s for s in STRINGS)


def test_sentencepiece_control_tokens_in_text_stay_text(trained_spm):
    """Unlike `tokenizers`, sentencepiece never reads "<s>" in text as BOS; neither do we."""
    ours = Tokenizer.from_file(trained_spm)
    assert ours.bos_id not in ours.encode("<s> hi", bos=False)
    assert ours.encode("hi")[0] == ours.bos_id and ours.add_bos


# ----------------------------------------------------------------------------- byte-level BPE

PRE_TOKENIZERS = {
    "gpt2": (None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)),
    "qwen2-style": (
        normalizers.NFC(),
        pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        ),
    ),
    "smollm-style": (
        None,
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    ),
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module", params=list(PRE_TOKENIZERS))
def trained_bpe(request, tmp_path_factory):
    """(tokenizer.json path, reference) for a byte-level BPE that `tokenizers` trains and saves."""
    normalizer, pre = PRE_TOKENIZERS[request.param]
    tk = HFTokenizer(models.BPE())
    if normalizer:
        tk.normalizer = normalizer
    tk.pre_tokenizer, tk.decoder = pre, decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=SPECIALS, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(varied_strings(3000, seed=2), trainer)
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    tk.save(str(path))
    return path, HFTokenizer.from_file(str(path))


def test_byte_level_bpe_matches_tokenizers(trained_bpe):
    path, reference = trained_bpe
    ours = Tokenizer.from_file(path)
    assert isinstance(ours, BPETokenizer) and not ours.add_bos
    strings = STRINGS + ["<|im_start|>user\nhi<|im_end|>", "a<|endoftext|>b", " <|im_end|> "]
    assert_same_ids(lambda s: ours.encode(s), lambda s: reference.encode(s).ids, strings)
    assert all(ours.decode(ours.encode(s)) == reference.decode(reference.encode(s).ids, skip_special_tokens=False) for s in strings)


def test_bpe_ranks_need_not_be_ids(trained_bpe):
    """`tokenizers` puts special tokens first, so vocabulary ids are offset from merge ranks."""
    ours = Tokenizer.from_file(trained_bpe[0])
    assert ours.ids[:3] != [0, 1, 2] and sorted(ours.ids) == list(range(len(ours.ids)))


# ----------------------------------------------------------------------------- Llama 3


@pytest.fixture(scope="module")
def llama3_reference():
    """`tokenizers` built by transformers' TikTokenConverter from the official file."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = llama3_tokenizer_file()
    tk = TikTokenConverter(vocab_file=str(path), pattern=LLAMA3_PATTERN_FOR_TEST).converted()
    tk.add_special_tokens(LLAMA3_SPECIALS)
    return path, tk


# written out here, not imported, so that a wrong pattern in tokenizer.py cannot pass unnoticed
LLAMA3_PATTERN_FOR_TEST = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def test_llama3_tiktoken_file_matches_tokenizers(llama3_reference):
    path, reference = llama3_reference
    ours = Tokenizer.from_file(path)
    assert isinstance(ours, BPETokenizer) and ours.vocab_size == 128256
    assert (ours.bos_id, ours.eos_id) == (128000, 128001)
    strings = STRINGS + ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"]
    assert_same_ids(lambda s: ours.encode(s, bos=False), lambda s: reference.encode(s, add_special_tokens=False).ids, strings)
    assert ours.encode("hi") == [128000] + ours.encode("hi", bos=False)


def test_llama3_in_hf_layout(llama3_reference, tmp_path):
    """The same vocabulary as a tokenizer.json (Llama 3 in Hugging Face layout)."""
    _, reference = llama3_reference
    reference.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    ours = Tokenizer.from_dir(tmp_path)
    assert (ours.bos_id, ours.eos_id) == (128000, 128009)
    assert_same_ids(lambda s: ours.encode(s, bos=False), lambda s: reference.encode(s, add_special_tokens=False).ids)


# ----------------------------------------------------------------------------- errors


def test_tokenizer_errors(tmp_path, trained_spm):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        Tokenizer.from_file(tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.model").write_bytes(b"\x00\x01 definitely not a model")
    with pytest.raises(ValueError, match="neither a SentencePiece model nor a tiktoken rank file"):
        Tokenizer.from_file(tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match="only byte-level BPE tokenizer.json files are supported, not 'WordPiece'"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    spec = {"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"unsupported pre-tokenizer \['Whitespace'\]"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    ours = Tokenizer.from_file(trained_spm)
    with pytest.raises(ValueError, match="token id 600 is outside"):
        ours.decode([5, 600])
    with pytest.raises(TypeError, match="encode takes a str"):
        ours.encode(b"bytes")
    assert Tokenizer.from_dir(tmp_path / "empty") is None
