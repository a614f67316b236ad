"""Shared fixtures: tiny random checkpoints written by transformers itself, and reference data.

transformers and tokenizers are test-only references; ../shared (this workplace's fixtures) is
optional and the tests that need it skip cleanly without it.
"""

import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's modules, from any working directory

from download import cache_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CACHE = cache_dir()  # the user's cache, before any test redirects it
STORIES = SHARED / "models" / "stories260K"

needs_stories = pytest.mark.skipif(not (STORIES / "model.safetensors").exists(), reason="../shared/models/stories260K absent")

VOCAB = 101
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
)

# One tiny checkpoint per family and per feature worth checking; each differs from Llama where its
# family does. Values are chosen so every quirk changes the output (small soft-caps, a llama3
# RoPE whose ramp covers one frequency, head_dim unequal to hidden / heads, a window of 4 < T).
TINY = {
    "llama3": (
        "LlamaConfig",
        dict(
            head_dim=16,
            rope_scaling=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=100, rope_theta=10000.0
            ),
        ),
    ),
    "llama_linear": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True, rope_scaling=dict(rope_type="linear", factor=2.5))),
    "llama_tied": ("LlamaConfig", dict(tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(sliding_window=4)),
    "mistral_nemo": ("MistralConfig", dict(head_dim=16, sliding_window=None)),  # head_dim != hidden / heads
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6)),
    "qwen3": ("Qwen3Config", dict(head_dim=16, rope_theta=1e6)),
    "gemma": ("GemmaConfig", dict(head_dim=16)),
    "gemma2": (
        "Gemma2Config",
        dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=12, attn_logit_softcapping=3.0, final_logit_softcapping=2.0),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=12,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": dict(rope_type="linear", factor=4.0, rope_theta=1e6),
                "sliding_attention": dict(rope_type="default", rope_theta=1e4),
            },
        ),
    ),
    "phi3": ("Phi3Config", dict(partial_rotary_factor=0.5)),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "smollm3": ("SmolLM3Config", dict(num_hidden_layers=4, no_rope_layer_interval=2)),  # layers 2 and 4 without RoPE
    "olmo2": ("Olmo2Config", dict()),
    "granite": ("GraniteConfig", dict(embedding_multiplier=3.0, attention_multiplier=0.3, residual_multiplier=0.5, logits_scaling=2.5)),
}
SLIDING_ALL = {"mistral"}  # every layer slides; the others mix sliding and global layers


# The bf16 lane: a dtype-sensitive quick test takes the `dtype` fixture and runs in float32 (the
# exact path) and in bfloat16 (what "auto" picks on a CPU with bf16 instructions; emulated and
# slow on one without, which tiny models can afford), whatever CPU runs the suite. Test ids name
# the dtype: test_x[qwen2-bfloat16].
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.bfloat16, id="bfloat16")]


@pytest.fixture(scope="session", params=DTYPES)
def dtype(request) -> torch.dtype:
    return request.param


def for_dtype(dtype: torch.dtype, float32: float, reference) -> float:
    """The tolerance of a comparison of two ways to compute the same thing in the model's dtype:
    float32's (measured, quoted where it is given), or in bfloat16 two rounding steps of
    bfloat16 at the scale of the reference values. bf16 keeps 8 significant bits, so a sum
    blocked otherwise (another batch or matmul shape) can flip the last bit of a rounded
    activation: one step, 2**-7 of the value's power of two, and the layers after it carry that
    on. Measured on the tiny models (2026-12-04): every such comparison exactly 0, on an
    avx512_bf16 CPU and with the same CPU held to AVX2 kernels (emulated bf16; docs/tests.md)."""
    if dtype == torch.float32:
        return float32
    scale = torch.as_tensor(reference).detach().abs().max().item()
    return 2 * torch.finfo(torch.bfloat16).eps * 2 ** math.floor(math.log2(max(scale, 1e-30)))


MEASURED: list[tuple[str, float, float]] = []  # (test, largest difference, tolerance) of each assert_close


def assert_close(ours, reference, tolerance: float, case: str = "") -> float:
    """Asserts that the largest absolute difference is at most `tolerance`, and records it: with
    CONTGPT_TOLERANCES=FILE, every test's largest difference and its tolerance go to FILE (JSON)
    when the run ends, the measurement a tolerance's comment should quote (docs/tests.md). `case`
    names the case within a test that loops over several."""
    ours, reference = (x if torch.is_tensor(x) else torch.tensor(x, dtype=torch.float64) for x in (ours, reference))
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    difference = (ours.double() - reference.double()).abs().max().item() if ours.numel() else 0.0
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    MEASURED.append((f"{test} {case}".strip(), difference, tolerance))
    assert difference <= tolerance, f"{case + ': ' if case else ''}largest difference {difference:.3g} > tolerance {tolerance:.3g}"
    return difference


def pytest_sessionfinish(session):
    if os.environ.get("CONTGPT_TOLERANCES") and MEASURED:
        worst = {}  # (test, tolerance): the largest difference held to it
        for test, difference, tolerance in MEASURED:
            worst[test, tolerance] = max(worst.get((test, tolerance), 0.0), difference)
        rows = [{"test": t, "tolerance": tol, "measured": d} for (t, tol), d in sorted(worst.items())]
        path = Path(os.environ["CONTGPT_TOLERANCES"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1))


def randomize(model, seed: int = 0) -> None:
    """Weights large enough that attention is far from uniform and norms are not identities."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.add_(0.3 * noise)  # around 1 (Llama) or 0 (Gemma's 1 + w)
            elif "embed" in name:
                p.copy_(noise)
            else:
                p.copy_(0.25 * noise)


def write_tiny(name: str, folder: Path, **save_kw) -> Path:
    import transformers

    cls_name, extra = TINY[name]
    config = getattr(transformers, cls_name)(**{**COMMON, **extra})
    model = transformers.AutoModelForCausalLM.from_config(config)
    randomize(model, seed=sum(map(ord, name)))
    path = folder / name
    model.save_pretrained(path, **save_kw)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """name -> checkpoint directory, written once per session by transformers' save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny")
    cache = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = write_tiny(name, folder)
        return cache[name]

    return get


def reference_model(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def reference_mask(durations: torch.Tensor, window: int | None, name: str):
    """The 4-D additive mask (B, 1, T, T) transformers takes for a continuous timeline:
    log-durations on the causal triangle, and the sliding window where the family has one
    (a dict per layer type, since a prepared 4-D mask is used as it is for every layer)."""
    T = durations.shape[1]
    idx = torch.arange(T)
    causal = idx[None, :] <= idx[:, None]

    def mask(visible):
        return torch.where(visible, durations.log()[:, None, None, :], -math.inf)

    if window is None:
        return mask(causal)
    sliding = mask(causal & (idx[:, None] - idx[None, :] < window))
    if name in SLIDING_ALL:
        return sliding
    return {"full_attention": mask(causal), "sliding_attention": sliding}


def random_timeline(B: int, T: int, seed: int = 0):
    """Per-row random durations in [0.1, 2] (some above 1: positive biases) and positions that
    are their running sum plus a random offset."""
    g = torch.Generator().manual_seed(seed)
    durations = 0.1 + 1.9 * torch.rand(B, T, generator=g)
    positions = durations.cumsum(1) - 1 + 3 * torch.rand(B, 1, generator=g)
    return positions, durations


def varied_strings(n: int = 240, seed: int = 0) -> list[str]:
    """Hand-picked hard cases, then random mixtures of scripts, digits, whitespace and code."""
    fixed = [
        "",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        " \n ",
        "Hello world",
        " Hello world",
        "Hello  world  ",
        "hello\nworld",
        "hello\n\nworld",
        "hello \n world",
        "\r\nwindows\r\nlines",
        "tab\tseparated\tvalues",
        "I'm",
        "you're",
        "they'LL",
        "it's",
        "We'VE",
        "don't",
        "'s",
        "12",
        "123",
        "1234",
        "12345",
        "3.14159",
        "1,000,000",
        "2024-05-01",
        "a1b2c3",
        " 42",
        "x=1;y=2",
        "0x1F",
        "1e-5",
        "café",
        "naïve résumé",
        "Ελληνικά",
        "русский текст",
        "日本語のテキスト",
        "中文字符",
        "한국어",
        "العربية",
        "עברית",
        "हिन्दी",
        "🙂",
        "🙂🙂 emoji 👍🏽",
        "👨‍👩‍👧",
        "€100",
        "£ and ¥",
        "ﬁ ligature",
        "def f(x):\n    return x ** 2\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "<html><body>hi</body></html>",
        "SELECT * FROM t WHERE a = 'b';",
        "    indented",
        "a" * 30,
        "The quick brown fox jumps over the lazy dog.",
        "UPPER lower MiXeD",
        "e.g. i.e. etc.",
        "!!!???...",
        "(parenthesis) [brackets] {braces}",
        "mail@example.com",
        "https://example.com/a?b=c",
        "apple apple apple apple",
        'Question: In the sentence "apple apple apple apple", how many times?',
    ]
    pools = [
        ["the", "cat", "apple", "running", "Question", "answer", "über", "façade", "日本", "мир", "🙂", "σ"],
        ["0", "7", "42", "2024", "3.5", "100000"],
        [" ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\r\n"],
        [".", ",", "!", "?", "'s", "'ll", "-", "_", "(", ")", "{", "}", ":", ";", '"', "#", "/", "*"],
        ["def", "return", "=", "==", "->", "x[i]", "f(x)", "//", "/*", "*/", "0x", "\\n"],
    ]
    rng = random.Random(seed)
    out = list(fixed)
    while len(out) < n:
        pieces = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 14))]
        out.append("".join(pieces))
    return out


@pytest.fixture(scope="session")
def trained_spm(tmp_path_factory):
    """A Llama-style SentencePiece BPE model (byte fallback, split digits, kept whitespace)."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(varied_strings(3000, seed=1)),
        model_writer=out,
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=0.999,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(scope="session")
def trained_bpe_json(tmp_path_factory):
    """A GPT-2-style byte-level BPE tokenizer.json that `tokenizers` trains here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(varied_strings(3000, seed=3), trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tk.save(str(path))
    return path


def in_ci() -> bool:
    """CI=true (or 1, yes) as CI services set it; CI=false or an empty CI is not CI."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def fetch_or_skip(fetch):
    """Run a registry download. Only an unreachable registry skips, and only outside CI (which
    has one); a hash mismatch, a missing file or a full disk is a failure everywhere."""
    from download import Unreachable

    try:
        return fetch()
    except Unreachable as e:
        if in_ci():
            raise
        pytest.skip(f"registry not reachable: {e}")


def llama3_tokenizer_file() -> Path:
    """The official Llama 3 tiktoken file, from the llama-models 0.3.0 wheel, hash-checked, cached."""
    from download import Release, fetch_assembled

    wheel = Release(
        "llama-models", "0.3.0", "llama_models-0.3.0-py3-none-any.whl", "7f77f78ff13fca09f70d76a376aff6414cd901623fb9d57e69c2f8367a73032f"
    )
    sha = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
    dest = CACHE / "reference" / "llama3-tokenizer.model"
    return fetch_or_skip(lambda: fetch_assembled([(wheel, "llama_models/llama3/tokenizer.model")], sha, dest))


LLAMA_CPP_VOCABS = ("llama-spm", "llama-bpe", "qwen2", "phi-3")


def llama_cpp_vocab_dir() -> Path:
    """llama.cpp's vocabulary-only GGUF files with their .inp/.out test vectors, from the
    llama-cpp-python 0.3.36 source archive (read, never built), hash-checked, cached."""
    from download import Release, fetch_members

    sdist = Release(
        "llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    )
    base = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-"
    members = [f"{base}{v}.gguf{ext}" for v in LLAMA_CPP_VOCABS for ext in ("", ".inp", ".out")]
    return fetch_or_skip(lambda: fetch_members(sdist, members, CACHE / "reference" / "llama.cpp-vocab"))


# ----------------------------------------------------------------------------- the explorer in a real browser


def tiny_explorer_model(tokenizer, scale: float, dtype: torch.dtype = torch.float32):
    """A tiny random Qwen2-style model over the tokenizer's vocabulary, weights N(0, scale^2)
    rounded to dtype, with the precision load() would set: what the explorer's quick tests serve."""
    from contgpt import Config, Transformer
    from precision import resolve

    cfg = Config(family="qwen2", vocab_size=tokenizer.vocab_size, dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    model.precision = resolve(dtype, torch.device("cpu"))
    return model.to(dtype).eval()


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium through its own chromedriver (nothing downloaded)."""
    if not (CHROMIUM and DRIVER):
        if in_ci():
            pytest.fail("chromium and chromedriver must be installed (.ci/run installs them with apt-get)")
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
