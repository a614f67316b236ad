"""Tokenizers for the checkpoints contgpt loads, behind one small interface.

Three kinds of file, two engines:
- SentencePiece `tokenizer.model` (Llama 2, Mistral, Gemma): the sentencepiece library.
- tiktoken rank file `tokenizer.model` (Llama 3): tiktoken, with Llama 3's special tokens.
- byte-level BPE `tokenizer.json` (Qwen2, SmolLM2, Llama 3 in HF layout): turned into a tiktoken
  Encoding, with the merge priorities as ranks and the split regex of the pre-tokenizer.

A GGUF file's byte-level BPE vocabulary is built straight from its lists (`gguf_bpe_tokenizer`);
a SentencePiece one is written out as a tokenizer.model (`gguf_sentencepiece_files`) for the
sentencepiece library to read.

In BPE vocabularies, special tokens written in the text (say "<|im_start|>") are encoded as those
tokens, as the Hugging Face tokenizers do, so chat prompts can be plain strings. SentencePiece
files keep the sentencepiece library's behaviour: user-defined symbols (Gemma's
"<start_of_turn>") are atomic, control tokens such as "<s>" in text stay text.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import unicodedata
from functools import lru_cache
from pathlib import Path

import sentencepiece
import tiktoken

# Split regexes of the byte-level BPE families, by the names llama.cpp gives them.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-2's split after every digit was split off on its own (HF's Digits(individual_digits) in
# front of ByteLevel, as in SmolLM), in one pass: digits alone, and a run of spaces in front of a
# digit ends there, as it would at the end of the chunk the digit split off.
GPT2_DIGITS_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
PATTERNS = {"gpt2": GPT2_PATTERN, "smollm": GPT2_DIGITS_PATTERN, "llama-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}

# Llama 3's special tokens follow its 128000 ranks, in this order, padded to 256 with reserved ones.
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_SPECIALS += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(LLAMA3_SPECIALS))]


class Tokenizer:
    """encode(text, bos=True) -> ids; decode(ids) -> text; bos_id, eos_id, vocab_size.

    `bos=True` prepends the BOS token when this tokenizer's model expects one (`add_bos`, true
    for Llama and Gemma, false for Qwen2); `bos=False` never does.
    """

    chat_template: str | None = None  # the checkpoint's Jinja chat template, when it has one

    def __init__(self, *, vocab_size: int, bos_id: int | None, eos_id: int | None, add_bos: bool):
        self.vocab_size, self.bos_id, self.eos_id, self.add_bos = vocab_size, bos_id, eos_id, add_bos

    def chat(self, user: str, system: str | None = None) -> str:
        """A one-turn ChatML prompt (Qwen2.5, SmolLM2 instruct models), ready for the answer.

        Without `system`, the default system prompt written in the checkpoint's chat template is
        used, as the template itself would. Only ChatML templates are understood.
        """
        if not self.chat_template or "<|im_start|>" not in self.chat_template:
            raise ValueError("this tokenizer has no ChatML chat template")
        if system is None:
            # a literal system turn in the template (its newline written as such or as "\n")
            default = re.search(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}+]+?)<\|im_end\|>", self.chat_template)
            system = default.group(1) if default else None
        turns = [("system", system)] if system else []
        turns.append(("user", user))
        return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self._bos(bos) + self._encode(_text(text))

    def encode_with_offsets(self, text: str, bos: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """ids and, for each, the character range [start, end) of `text` it covers. A token that
        holds part of a character (a byte of it) covers that whole character; BOS covers (0, 0)."""
        ids, byte_spans = self._encode_with_byte_spans(_text(text))
        char_of = _char_index_of_bytes(text)
        offsets = [(char_of[b], char_of[e - 1] + 1) if e > b else (char_of[b], char_of[b]) for b, e in byte_spans]
        bos_ids = self._bos(bos)
        return bos_ids + ids, [(0, 0)] * len(bos_ids) + offsets

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside this tokenizer's vocabulary [0, {self.vocab_size})")
        return self._decode(ids)

    def ids_for(self, answer: str) -> list[int]:
        """Every token id whose decoded text, stripped of whitespace, is exactly `answer`
        ("4" and " 4" for "4"; "know" is not "no")."""
        if not hasattr(self, "_by_text"):
            self._by_text: dict[str, list[int]] = {}
            for i in range(self.vocab_size):
                try:
                    self._by_text.setdefault(self._decode([i]).strip(), []).append(i)
                except ValueError:  # an id with no text (a gap in the vocabulary)
                    pass
        return self._by_text.get(answer.strip(), [])

    def _bos(self, bos: bool) -> list[int]:
        return [self.bos_id] if bos and self.add_bos and self.bos_id is not None else []

    # the engine's part: text to ids (with each token's byte range), ids to text
    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_with_byte_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------------- loading

    @staticmethod
    def from_dir(path: str | Path) -> Tokenizer | None:
        """The tokenizer of a checkpoint directory, or None if it has no tokenizer file."""
        path = Path(path)
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).exists():
                tokenizer = Tokenizer.from_file(path / name)
                tokenizer.chat_template = _settings(path / name).get("chat_template")
                return tokenizer
        return None

    @staticmethod
    def from_file(path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        if path.suffix == ".json":
            return BPETokenizer.from_hf_json(path)
        if _is_tiktoken_file(path):
            return BPETokenizer.from_llama3(path)
        return SentencePieceTokenizer(path)


def _text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str, not {type(text).__name__}")
    return text


def _char_index_of_bytes(text: str) -> list[int]:
    """For each byte of text's UTF-8 encoding (and one past the end), the index of its character."""
    index = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
    return index + [len(text)]


def _settings(path: Path) -> dict:
    """tokenizer_config.json beside a tokenizer file (bos/eos tokens, add_bos_token), or {}."""
    config = path.parent / "tokenizer_config.json"
    return json.loads(config.read_text()) if config.exists() else {}


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _is_tiktoken_file(path: Path) -> bool:
    """A tiktoken rank file is text lines "<base64> <rank>"; a SentencePiece file is protobuf."""
    with open(path, "rb") as f:
        first = f.readline(200).split()
    try:
        return len(first) == 2 and bool(base64.b64decode(first[0], validate=True)) and first[1].isdigit()
    except ValueError:
        return False


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: Path):
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{path} is neither a SentencePiece model nor a tiktoken rank file: {e}") from e
        settings = _settings(path)
        bos, eos = self.sp.bos_id(), self.sp.eos_id()
        super().__init__(
            vocab_size=self.sp.get_piece_size(),
            bos_id=bos if bos >= 0 else None,
            eos_id=eos if eos >= 0 else None,
            add_bos=settings.get("add_bos_token", True),
        )

    def _encode(self, text):
        return self.sp.encode(text)

    def _decode(self, ids):
        return self.sp.decode(ids)

    def _encode_with_byte_spans(self, text):
        pieces = self.sp.encode(text, return_type="proto").pieces
        spans = [[p.begin, p.end] for p in pieces]
        for i in range(len(spans) - 2, -1, -1):  # leading bytes of a character have zero width:
            if spans[i][0] == spans[i][1] == spans[i + 1][0]:  # give them the character's range
                spans[i][1] = spans[i + 1][1]
        return [p.id for p in pieces], [tuple(s) for s in spans]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte, used in byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


class BPETokenizer(Tokenizer):
    """Byte-level BPE on tiktoken. tiktoken's ranks are merge priorities (single bytes first,
    then every merge in order); `ids` maps a rank to the vocabulary's own id, which is usually
    the same number but need not be."""

    def __init__(
        self,
        ranks: dict[bytes, int],
        ids: list[int],
        specials: dict[str, int],
        pattern: str,
        *,
        bos_id,
        eos_id,
        add_bos,
        nfc=False,
        name="bpe",
        pieces: dict[int, bytes] | None = None,
    ):
        n = len(ranks)
        self.enc = tiktoken.Encoding(
            name=name,
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens={text: n + i for i, text in enumerate(specials)},
        )
        self.ids = ids + list(specials.values())  # tiktoken rank -> vocabulary id (None: no such token)
        self.pieces = pieces or {ids[r]: piece for piece, r in ranks.items() if ids[r] is not None}  # id -> bytes
        self.pieces.update((i, text.encode()) for text, i in specials.items())
        self.nfc = nfc
        super().__init__(vocab_size=max(self.pieces) + 1, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos)

    def _encode(self, text):
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        ids = [self.ids[r] for r in self.enc.encode(text, allowed_special="all")]
        return [i for i in ids if i is not None]

    def _encode_with_byte_spans(self, text):
        if self.nfc and unicodedata.normalize("NFC", text) != text:
            raise ValueError("this text changes under NFC normalization; normalize it first so offsets match it")
        ids, spans, at = [], [], 0
        for i in self._encode(text):
            size = len(self.pieces[i])
            ids.append(i)
            spans.append((at, at + size))
            at += size
        return ids, spans

    def _decode(self, ids):
        missing = [i for i in ids if i not in self.pieces]
        if missing:
            raise ValueError(f"token id {missing[0]} has no text in this vocabulary")
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    @classmethod
    def from_llama3(cls, path: Path) -> BPETokenizer:
        """The official Llama 3 tiktoken file: ranks are ids, 256 special tokens follow."""
        ranks = {}
        for line in path.read_bytes().splitlines():
            if line:
                piece, rank = line.split()
                ranks[base64.b64decode(piece)] = int(rank)
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise ValueError(f"{path}: the ranks of a tiktoken file must be 0..n-1")
        specials = {text: len(ranks) + i for i, text in enumerate(LLAMA3_SPECIALS)}
        return cls(
            ranks,
            list(range(len(ranks))),
            specials,
            LLAMA3_PATTERN,
            name=path.name,
            bos_id=specials["<|begin_of_text|>"],
            eos_id=specials["<|end_of_text|>"],
            add_bos=True,
        )

    @classmethod
    def from_hf_json(cls, path: Path) -> BPETokenizer:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{path}: only byte-level BPE tokenizer.json files are supported, not {model.get('type')!r}")
        normalizer = (spec.get("normalizer") or {}).get("type")
        if normalizer not in (None, "NFC"):
            raise ValueError(f"{path}: unsupported normalizer {normalizer!r} (supported: none, NFC)")
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        settings = _settings(path)
        bos_id, add_bos = _hf_bos(spec, settings, specials)
        eos = _token_text(settings.get("eos_token"))
        return cls.from_vocab(
            model["vocab"],
            merges,
            specials,
            hf_pattern(spec.get("pre_tokenizer"), path),
            bos_id=bos_id,
            eos_id=specials.get(eos),
            add_bos=add_bos,
            nfc=normalizer == "NFC",
            name=path.name,
        )

    @classmethod
    def from_vocab(cls, vocab: dict[str, int], merges: list, specials: dict[str, int], pattern: str, **kw):
        """From a GPT-2-style vocabulary (strings in bytes_to_unicode characters) and merges."""
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        raw = lambda token: bytes(map(byte_of.__getitem__, token))
        order = [bytes_to_unicode()[b] for b in range(256)]
        if not any(t in vocab for t in order):
            raise ValueError("not a byte-level BPE vocabulary: none of the 256 byte tokens is in it")
        seen = set(order)
        for left, right in merges:
            if left + right not in seen:
                seen.add(left + right)
                order.append(left + right)
        unknown = [t for t in order[256:] if t not in vocab]
        if unknown:
            raise ValueError(f"merge result {unknown[0]!r} is not in the vocabulary")
        raws = {token: raw(token) for token in order}  # each token's bytes, once (151k of them in Qwen2)
        ranks = {raws[token]: r for r, token in enumerate(order)}
        # a byte the vocabulary lacks (never seen in training) keeps a rank for tiktoken but has
        # no id: it is dropped, as Hugging Face's BPE drops a byte it cannot look up
        # decode any id, also one no merge can produce (unused entries) or one outside the alphabet
        pieces = {i: raws[t] if t in raws else raw(t) if set(t) <= byte_of.keys() else t.encode() for t, i in vocab.items()}
        return cls(ranks, [vocab.get(t) for t in order], specials, pattern, pieces=pieces, **kw)


def _hf_bos(spec: dict, settings: dict, specials: dict[str, int]) -> tuple[int | None, bool]:
    """BOS id and whether it is added, from tokenizer_config.json or the post-processor template."""
    processor = spec.get("post_processor") or {}
    steps = processor.get("processors", [processor])
    template = next((s["single"] for s in steps if s.get("type") == "TemplateProcessing"), None)
    template_bos = template[0].get("SpecialToken", {}).get("id") if template else None
    bos = _token_text(settings.get("bos_token")) or template_bos
    add_bos = settings.get("add_bos_token", template_bos is not None)
    return specials.get(bos), bool(add_bos)


def hf_pattern(pre: dict | None, path: Path) -> str:
    """The split regex of a byte-level BPE tokenizer.json's pre-tokenizer."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_PATTERN
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        if split.get("behavior") == "Isolated" and not split.get("invert") and "Regex" in split.get("pattern", {}):
            return split["pattern"]["Regex"]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return GPT2_DIGITS_PATTERN
    raise ValueError(f"{path}: unsupported pre-tokenizer {kinds}; supported: ByteLevel, Split(regex)+ByteLevel, Digits(individual)+ByteLevel")


# ----------------------------------------------------------------------------- from GGUF

GGUF_NORMAL, GGUF_UNKNOWN, GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_UNUSED, GGUF_BYTE = 1, 2, 3, 4, 5, 6


def gguf_tokenizer_config(meta: dict) -> dict:
    """The tokenizer_config.json of a GGUF vocabulary: BOS/EOS tokens, add_bos_token and the chat template."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError("this GGUF file has no vocabulary (tokenizer.ggml.tokens)")
    bos, eos = (meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("bos", "eos"))
    return {
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")),
        "chat_template": meta.get("tokenizer.chat_template"),
    }


def gguf_sentencepiece_files(meta: dict) -> dict[str, str | bytes]:
    """tokenizer.model and tokenizer_config.json for a SentencePiece GGUF vocabulary ("llama"),
    for the sentencepiece library to read."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "llama":
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}; supported: gpt2 (byte-level BPE), llama (SentencePiece)")
    config = gguf_tokenizer_config(meta)
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [GGUF_NORMAL] * len(tokens)
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None:
        raise ValueError("this SentencePiece-style GGUF vocabulary has no scores (tokenizer.ggml.scores)")
    special = {key: meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("bos", "eos", "unknown", "padding")}
    model = sentencepiece_model(
        tokens,
        scores,
        types,
        add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        special={k: v for k, v in special.items() if v is not None},
    )
    return {"tokenizer.model": model, "tokenizer_config.json": json.dumps(config, ensure_ascii=False)}


def gguf_bpe_tokenizer(meta: dict) -> BPETokenizer:
    """The byte-level BPE vocabulary of a GGUF file's metadata as a tokenizer, built straight from
    its lists (no tokenizer.json is written and parsed: a 151k-token vocabulary's JSON round trip
    costs seconds). The tests hold it to the tokenizer.json route and to llama.cpp's test vectors."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [GGUF_NORMAL] * len(tokens)
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in GGUF_PRE:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}; supported: {', '.join(GGUF_PRE)}")
    specials = {tokens[i]: i for i, kind in enumerate(types) if kind in (GGUF_CONTROL, GGUF_USER_DEFINED)}
    bos, eos = (meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("bos", "eos"))
    merges = [m.split(" ") for m in meta.get("tokenizer.ggml.merges", [])]
    tokenizer = BPETokenizer.from_vocab(
        {t: i for i, t in enumerate(tokens)},
        merges,
        specials,
        PATTERNS[GGUF_PRE[pre]],
        bos_id=specials.get(tokens[bos]) if bos is not None else None,
        eos_id=specials.get(tokens[eos]) if eos is not None else None,
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        nfc=GGUF_PRE[pre] == "qwen2",
        name="gguf",
    )
    tokenizer.chat_template = meta.get("tokenizer.chat_template")
    return tokenizer


# llama.cpp's pre-tokenizer names for byte-level BPE vocabularies, and their split regexes
GGUF_PRE = {"gpt-2": "gpt2", "qwen2": "qwen2", "llama-bpe": "llama-bpe", "llama3": "llama-bpe", "smollm": "smollm"}


def sentencepiece_model(tokens, scores, types, *, add_dummy_prefix: bool, special: dict[str, int]) -> bytes:
    """A SentencePiece BPE model file (its protobuf, written by hand) for a vocabulary given as
    pieces, scores and types: exactly what sentencepiece's BPE needs to encode as the original."""

    def varint(n: int) -> bytes:
        n &= (1 << 64) - 1  # negative int32s are ten-byte two's complement varints
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(number: int, value) -> bytes:
        if isinstance(value, bytes):  # length-delimited
            return varint(number << 3 | 2) + varint(len(value)) + value
        if isinstance(value, float):  # fixed 32-bit
            return varint(number << 3 | 5) + struct.pack("<f", value)
        return varint(number << 3) + varint(int(value))  # varint (ints, bools, enums)

    # sentencepiece wants exactly one unknown piece: the one the file names; llama.cpp also types
    # padding entries "unknown" (Phi-3), which become control pieces, never produced from text
    unk = special.get("unknown")
    types = [GGUF_UNKNOWN if i == unk else GGUF_CONTROL if t == GGUF_UNKNOWN else t for i, t in enumerate(types)]
    pieces = b"".join(
        field(1, field(1, piece.encode("utf-8")) + field(2, float(score)) + field(3, kind)) for piece, score, kind in zip(tokens, scores, types)
    )
    trainer = field(3, 2) + field(4, len(tokens)) + field(35, GGUF_BYTE in types)  # BPE, byte fallback
    for key, (id_field, piece_field) in {"unknown": (40, 45), "bos": (41, 46), "eos": (42, 47), "padding": (43, 48)}.items():
        trainer += field(id_field, special.get(key, -1))
        if key in special:
            trainer += field(piece_field, tokens[special[key]].encode("utf-8"))
    normalizer = field(1, b"identity") + field(3, add_dummy_prefix) + field(4, False) + field(5, True)
    return pieces + field(2, trainer) + field(3, normalizer)
