"""Tokenizers for the checkpoints contgpt loads, behind one small interface.

Three kinds of file, two engines:
- SentencePiece `tokenizer.model` (Llama 2, Mistral, Gemma): the sentencepiece library.
- tiktoken rank file `tokenizer.model` (Llama 3): tiktoken, with Llama 3's special tokens.
- byte-level BPE `tokenizer.json` (Qwen2, SmolLM2, Llama 3 in HF layout): turned into a tiktoken
  Encoding, with the merge priorities as ranks and the split regex of the pre-tokenizer.

Special tokens written in the text (say "<|im_start|>") are encoded as those tokens, as the
Hugging Face tokenizers do, so chat prompts can be written as plain strings.
"""

from __future__ import annotations

import base64
import json
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
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "smollm": GPT2_DIGITS_PATTERN, "llama-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}

# Llama 3's special tokens follow its 128000 ranks, in this order, padded to 256 with reserved ones.
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
]  # fmt: skip
LLAMA3_SPECIALS += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(LLAMA3_SPECIALS))]


class Tokenizer:
    """encode(text, bos=True) -> ids; decode(ids) -> text; bos_id, eos_id, vocab_size.

    `bos=True` prepends the BOS token when this tokenizer's model expects one (`add_bos`, true
    for Llama and Gemma, false for Qwen2); `bos=False` never does.
    """

    def __init__(self, *, vocab_size: int, bos_id: int | None, eos_id: int | None, add_bos: bool):
        self.vocab_size, self.bos_id, self.eos_id, self.add_bos = vocab_size, bos_id, eos_id, add_bos

    def encode(self, text: str, bos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        ids = self._encode(text)
        return [self.bos_id] + ids if bos and self.add_bos and self.bos_id is not None else ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside this tokenizer's vocabulary [0, {self.vocab_size})")
        return self._decode(ids)

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------------- loading

    @staticmethod
    def from_dir(path: str | Path) -> Tokenizer | None:
        """The tokenizer of a checkpoint directory, or None if it has no tokenizer file."""
        path = Path(path)
        if (path / "tokenizer.json").exists():
            return Tokenizer.from_file(path / "tokenizer.json")
        if (path / "tokenizer.model").exists():
            return Tokenizer.from_file(path / "tokenizer.model")
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

    def __init__(self, ranks: dict[bytes, int], ids: list[int], specials: dict[str, int], pattern: str,
                 *, bos_id, eos_id, add_bos, nfc=False, name="bpe"):  # fmt: skip
        n = len(ranks)
        self.enc = tiktoken.Encoding(
            name=name,
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens={text: n + i for i, text in enumerate(specials)},
        )
        self.ids = ids + list(specials.values())  # tiktoken rank -> vocabulary id
        self.pieces = {ids[r]: piece for piece, r in ranks.items()}  # vocabulary id -> bytes
        self.pieces.update((i, text.encode()) for text, i in specials.items())
        self.nfc = nfc
        super().__init__(vocab_size=max(self.pieces) + 1, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos)

    def _encode(self, text):
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        return [self.ids[r] for r in self.enc.encode(text, allowed_special="all")]

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
        return cls(ranks, list(range(len(ranks))), specials, LLAMA3_PATTERN, name=path.name,
                   bos_id=specials["<|begin_of_text|>"], eos_id=specials["<|end_of_text|>"], add_bos=True)  # fmt: skip

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
        return cls.from_vocab(model["vocab"], merges, specials, hf_pattern(spec.get("pre_tokenizer"), path),
                              bos_id=bos_id, eos_id=specials.get(eos), add_bos=add_bos,
                              nfc=normalizer == "NFC", name=path.name)  # fmt: skip

    @classmethod
    def from_vocab(cls, vocab: dict[str, int], merges: list, specials: dict[str, int], pattern: str, **kw):
        """From a GPT-2-style vocabulary (strings in bytes_to_unicode characters) and merges."""
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        raw = lambda token: bytes(byte_of[c] for c in token)  # noqa: E731
        order = [bytes_to_unicode()[b] for b in range(256)]
        missing = [t for t in order if t not in vocab]
        if missing:
            raise ValueError(f"not a byte-level vocabulary: byte token {missing[0]!r} is missing")
        seen = set(order)
        for left, right in merges:
            if left + right not in seen:
                seen.add(left + right)
                order.append(left + right)
        unknown = [t for t in order if t not in vocab]
        if unknown:
            raise ValueError(f"merge result {unknown[0]!r} is not in the vocabulary")
        ranks = {raw(token): r for r, token in enumerate(order)}
        return cls(ranks, [vocab[t] for t in order], specials, pattern, **kw)


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
    raise ValueError(
        f"{path}: unsupported pre-tokenizer {kinds}; supported: ByteLevel, Split(regex)+ByteLevel, "
        "Digits(individual)+ByteLevel"
    )
