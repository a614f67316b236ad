"""Tokenizer files for a GGUF vocabulary, written the way Hugging Face lays them out, for the
tests: a byte-level BPE vocabulary as a tokenizer.json (which `tokenizers` and our tokenizer.py
both read), a SentencePiece one as tokenizer.py writes it. load() builds byte-level vocabularies
straight from their lists; these files are the independent route the tests compare it with."""

import json

from tokenizer import (
    GGUF_CONTROL,
    GGUF_NORMAL,
    GGUF_PRE,
    GGUF_USER_DEFINED,
    GPT2_DIGITS_PATTERN,
    GPT2_PATTERN,
    PATTERNS,
    gguf_sentencepiece_files,
    gguf_tokenizer_config,
)


def gguf_tokenizer_files(meta: dict) -> dict[str, str | bytes]:
    """tokenizer.json (byte-level BPE, "gpt2") or tokenizer.model (SentencePiece, "llama"), and
    tokenizer_config.json, for the vocabulary in a GGUF file's metadata."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return gguf_sentencepiece_files(meta)
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [GGUF_NORMAL] * len(tokens)
    spec = bpe_tokenizer_json(tokens, types, meta.get("tokenizer.ggml.merges", []), meta.get("tokenizer.ggml.pre", "gpt-2"))
    return {"tokenizer.json": spec, "tokenizer_config.json": json.dumps(gguf_tokenizer_config(meta), ensure_ascii=False)}


def bpe_tokenizer_json(tokens: list[str], types: list[int], merges: list[str], pre: str) -> str:
    if pre not in GGUF_PRE:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}; supported: {', '.join(GGUF_PRE)}")
    pattern = PATTERNS[GGUF_PRE[pre]]
    level = lambda use_regex: {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": use_regex}
    if pattern == GPT2_PATTERN:
        pre_tokenizer = level(True)
    elif pattern == GPT2_DIGITS_PATTERN:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, level(True)]}
    else:
        split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [split, level(False)]}
    added = [i for i, t in enumerate(types) if t in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    spec = {
        "version": "1.0",
        "added_tokens": [
            {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for i in added
        ],
        # Qwen2's own tokenizer normalizes to NFC; the others have no normalizer
        "normalizer": {"type": "NFC"} if GGUF_PRE[pre] == "qwen2" else None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": level(False),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges,
        },
    }
    return json.dumps(spec, ensure_ascii=False)
