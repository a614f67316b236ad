"""contgpt: pretrained Llama-family language models run as Continuous Causal Transformers.

Read top to bottom, it is the model: families and config, RMSNorm, RoPE and at once the
continuous time (where keys sit, the default timeline, the log-duration bias), attention, MLP,
block, the transformer's forward; then the mixture of experts, the RoPE scalings of long-context
checkpoints, the KV cache and generation. Input checks live in validate.py, reached from forward
by one call. Parameter names are Hugging Face's (load.py reads checkpoints into it); with unit
durations it computes exactly the ordinary model. How it differs from Llama:

1. Positions are real numbers: RoPE angles are computed in float32 from the positions of each
   call, with no integer-indexed cos/sin table.
2. Token j lasts a duration d_j > 0, holding its embedding on (t_j - d_j, t_j]. Attention over
   past time, integrated by the right-endpoint rule, is softmax attention plus log(d_j) on every
   score of key j (`duration_bias`): d = 1 is the ordinary model, d = 0 hides a key. `rule`
   moves a key's rotary position inside its interval (`RULES`).
3. Inputs may be raw embedding rows instead of token ids (a word halfway between two words is
   a mixed row); family scalings are applied here.
4. The KV cache keeps each key's position and duration, so generation continues a prefix that
   lives on a continuous timeline.
5. Other families differ from Llama only through the FAMILIES table and config values, never
   through a branch on a family's name. Sliding windows count tokens, not units of time.
6. Attention weights and the residual stream pass through named identity modules
   (`self_attn.probs`, `resid_in`, `resid_out`) for forward hooks, free when none is registered.

Precision: weights and the matmuls of the projections, MLP and head run in the model's dtype
(float32 or bfloat16; int8 weights through int8.Int8Linear). What decides the continuous
behaviour runs in float32 whatever that dtype: RMSNorm's statistics, RoPE angles and rotation,
the attention scores (queries and keys upcast), the soft-cap, the log-duration bias, the softmax
and the returned logits. Keys and values are cached in the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import validate

# ----------------------------------------------------------------------------- families and config


@dataclass(frozen=True)
class Quirks:
    """How a family departs from Llama. Everything not listed here is shared."""

    act: str = "silu"  # MLP gate activation: "silu", or "gelu_tanh" (Gemma)
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + weight): Gemma stores weight - 1
    embed_scale: bool = False  # input embeddings are multiplied by sqrt(dim) (Gemma)
    qkv_bias: bool = False  # q, k and v projections carry a bias, o does not (Qwen2)
    fused: bool = False  # one qkv_proj and one gate_up_proj matrix (Phi-3)
    norms: str = "pre"  # where a block normalises: "pre" each branch's input (Llama), "sandwich" its
    #                     input and output (Gemma 2, 3), "post" its output only (OLMo 2)
    qk_norm: str = ""  # queries and keys RMS-normalised: "head" each head (Gemma 3, Qwen3), "all" all heads at once (OLMo 2)
    moe: bool = False  # the MLP is a mixture of experts, top-k routed (Mixtral)


_GEMMA = dict(act="gelu_tanh", norm_offset=1.0, embed_scale=True)
FAMILIES = {
    "llama": Quirks(),
    "mistral": Quirks(),
    "qwen2": Quirks(qkv_bias=True),
    "qwen3": Quirks(qk_norm="head"),
    "smollm3": Quirks(),
    "olmo2": Quirks(norms="post", qk_norm="all"),
    "granite": Quirks(),
    "phi3": Quirks(fused=True),
    "mixtral": Quirks(moe=True),
    "gemma": Quirks(**_GEMMA),
    "gemma2": Quirks(**_GEMMA, norms="sandwich"),
    "gemma3_text": Quirks(**_GEMMA, norms="sandwich", qk_norm="head"),
}


@dataclass
class Config:
    """A model's shape and settings; load.py makes one from a config.json or GGUF metadata."""

    family: str = "llama"
    vocab_size: int = 32000
    dim: int = 4096  # hidden_size
    hidden_dim: int = 11008  # intermediate_size of the MLP
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 128
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": one of ROPE_TYPES, ...}, global layers
    rope_local_theta: float | None = None  # Gemma 3: sliding layers use plain RoPE of this base
    rotary_fraction: float = 1.0  # rotate only the first part of each head (partial RoPE)
    attention_bias: bool = False  # the checkpoint's flag: biases on all four attention projections
    mlp_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None  # in tokens
    sliding_layers: tuple[bool, ...] = ()  # per layer: does it use the sliding window?
    rope_layers: tuple[bool, ...] = ()  # per layer: does it rotate (SmolLM3 leaves every fourth layer without)?
    query_scale: float | None = None  # scores scaled by query_scale**-0.5, else head_dim**-0.5
    attention_multiplier: float | None = None  # Granite: scores scaled by this instead
    attn_softcap: float | None = None  # Gemma 2: cap * tanh(score / cap) before the duration bias
    logit_softcap: float | None = None  # Gemma 2: the same on the output logits
    embedding_multiplier: float = 1.0  # Granite: input embeddings times this,
    residual_multiplier: float = 1.0  # each branch's output times this,
    logits_scaling: float = 1.0  # and the logits divided by this
    n_experts: int = 0  # mixture of experts: experts per layer,
    experts_per_token: int = 0  # and how many of them each token is routed to

    def __post_init__(self):
        if not self.sliding_layers:
            self.sliding_layers = (False,) * self.n_layers
        self.sliding_layers = tuple(bool(s) and self.sliding_window is not None for s in self.sliding_layers)
        self.rope_layers = tuple(bool(r) for r in self.rope_layers) or (True,) * self.n_layers
        validate.config(self, FAMILIES, ROPE_TYPES)

    @property
    def quirks(self) -> Quirks:
        return FAMILIES[self.family]


# ----------------------------------------------------------------------------- norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float):
        super().__init__()
        self.eps, self.offset = eps, offset
        # torch.full rather than arithmetic: load() builds on the meta device, where arithmetic is slow
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))

    def forward(self, x):
        # in float32 whatever the dtype: the mean of squares overflows or loses bits in 16 bits
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (self.offset + self.weight.float())).type_as(x)


# ----------------------------------------------------------------------------- rotary


def inverse_frequencies(cfg: Config, local: bool, length: torch.Tensor) -> tuple[torch.Tensor, float]:
    """RoPE frequencies (rotary_dim // 2,) in float32, and the attention factor that multiplies
    cos and sin (1 but for yarn and longrope). Long-context checkpoints scale the frequencies
    (`scaled_frequencies`, after the model); two scalings depend on each example's `length`
    (B,) and then give (B, rotary_dim // 2). `local`: Gemma 3's sliding layers, plain RoPE of
    their own base."""
    rotary_dim = int(cfg.head_dim * cfg.rotary_fraction)
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    if local or cfg.rope_scaling is None:
        return inv_freq, 1.0
    return scaled_frequencies(inv_freq, cfg.rope_scaling, theta, length)


def timeline_length(positions: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """How long each example's timeline (B, S) is, for the scalings that depend on it: from the
    start of its earliest token to the end of its latest, max(t) - min(t - d). For positions
    0..S-1 of duration 1 that is S, Hugging Face's max(position) + 1; unlike that, it does not
    change when every position shifts, so shift invariance holds for every scaling."""
    return positions.max(dim=1).values - (positions - durations).min(dim=1).values


def rotary(positions: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles t * f (times the attention factor), from real-valued positions
    (B, T) and frequencies (r/2,) or (B, r/2): each (B, 1, T, r/2)."""
    freqs = inv_freq.to(positions.device)
    freqs = freqs[:, None, None, :] if freqs.dim() == 2 else freqs
    angles = positions.float()[:, None, :, None] * freqs
    if attention_factor == 1.0:
        return angles.cos(), angles.sin()
    return angles.cos() * attention_factor, angles.sin() * attention_factor


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Split-half RoPE (Hugging Face layout) on the first 2 * r channels of x (B, H, T, head_dim),
    in float32: the result is float32 whatever x's dtype."""
    r = cos.shape[-1]
    x = x.float()
    x1, x2, rest = x[..., :r], x[..., r : 2 * r], x[..., 2 * r :]
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


# ----------------------------------------------------------------------------- continuous time
# Token j holds its embedding on the interval (t_j - d_j, t_j]. Attention integrates over past
# time; a quadrature rule takes each key's value as constant on its interval, weighted by its
# length d_j, and places the key's rotary position somewhere in it. Queries always sit at t_i.

RULES = {"right": 0.0, "left": 1.0, "midpoint": 0.5}  # a key sits this fraction of d before t


def key_positions(positions: torch.Tensor, durations: torch.Tensor, rule: str) -> torch.Tensor:
    """Where each key's rotary position sits in its interval (t - d, t]: t, t - d or t - d/2."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    return positions - RULES[rule] * durations


def default_timeline(positions, durations, last, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """What a caller leaves out of the timeline: positions and durations (B, T) in float32, the
    ordinary model's when both are left out. `last` (B, 1): the cache's last position, or None.

    Durations alone: each token ends where the next begins, so positions are the running sum of
    the durations after `last` (or after -1: durations 1 give 0..T-1). Positions alone: the
    durations are the gaps between them, the first one 1 (or its gap to `last`).
    """
    if positions is None:
        durations = torch.ones(1, T, device=device) if durations is None else durations
        start = last if last is not None else torch.full((1, 1), -1.0, device=device)
        return start + durations.cumsum(dim=1), durations
    if durations is None:
        first = positions[:, :1] - last if last is not None else torch.ones_like(positions[:, :1])  # (1 or B, 1)
        B = max(first.shape[0], positions.shape[0])
        durations = torch.cat((first.expand(B, 1), positions.diff(dim=1).expand(B, T - 1)), dim=1)
    return positions, durations


def duration_bias(durations: torch.Tensor, n_new: int, window: int | None) -> torch.Tensor:
    """What a duration does to attention: the additive score bias (B, T, S) for the last
    T = n_new of S tokens with these durations (B, S).

    log d_j where key j is visible to query i (j <= i, and within the window), -inf elsewhere.
    So softmax weights are d_j * exp(score_ij), normalised: the rectangle rule's integral. A
    duration of 1 adds 0 (the ordinary model), 0 gives -inf and hides the key. Raises if a query
    would see nothing at all, since its softmax would be 0/0.
    """
    B, S = durations.shape
    q_idx = torch.arange(S - n_new, S, device=durations.device)[:, None]  # (T, 1)
    k_idx = torch.arange(S, device=durations.device)[None, :]  # (1, S)
    visible = k_idx <= q_idx
    if window is not None:
        visible = visible & (q_idx - k_idx < window)
    bias = torch.where(visible, durations.log()[:, None, :], -math.inf)  # (B, T, S)
    if blind := validate.first_index(torch.isneginf(bias).all(dim=-1)):
        raise ValueError(
            f"token {S - n_new + blind[1]} of example {blind[0]} sees no key of positive duration (itself included): "
            f"give it or an earlier token a duration > 0"
        )
    return bias


# ----------------------------------------------------------------------------- attention


class Attention(nn.Module):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        quirks = cfg.quirks
        self.layer, self.fused, self.qk_norm, self.softcap = layer, quirks.fused, quirks.qk_norm, cfg.attn_softcap
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.attention_multiplier or (cfg.query_scale or cfg.head_dim) ** -0.5
        q_size, kv_size = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        if quirks.fused:
            self.qkv_proj = nn.Linear(cfg.dim, q_size + 2 * kv_size, bias=cfg.attention_bias)
        else:
            bias = cfg.attention_bias or quirks.qkv_bias
            self.q_proj = nn.Linear(cfg.dim, q_size, bias=bias)
            self.k_proj = nn.Linear(cfg.dim, kv_size, bias=bias)
            self.v_proj = nn.Linear(cfg.dim, kv_size, bias=bias)
        self.o_proj = nn.Linear(q_size, cfg.dim, bias=cfg.attention_bias)
        if quirks.qk_norm:  # over each head, or over the whole projection of all heads
            whole = quirks.qk_norm == "all"
            self.q_norm = RMSNorm(q_size if whole else cfg.head_dim, cfg.norm_eps, quirks.norm_offset)
            self.k_norm = RMSNorm(kv_size if whole else cfg.head_dim, cfg.norm_eps, quirks.norm_offset)
        # a place for forward hooks to see the attention weights (B, Hkv, rep, T, S); costs nothing unhooked
        self.probs = nn.Identity()

    def project(self, x):
        if self.fused:
            q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x, rope, bias, cache: KVCache | None):
        B, T, _ = x.shape
        q, k, v = self.project(x)
        if self.qk_norm == "all":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # queries sit at their positions t_i; keys wherever the quadrature rule puts them
            (q_cos, q_sin), (k_cos, k_sin) = rope
            q = apply_rotary(q, q_cos, q_sin)  # float32
            k = apply_rotary(k, k_cos, k_sin).type_as(v)  # keys are cached in the model's dtype
        if cache is not None:
            k, v = cache.extended(self.layer, k, v)  # (B, Hkv, S, hd), S = cached + T
        # grouped-query attention without copying keys: query heads grouped by their kv head;
        # scores in float32, so that a 16-bit model still resolves small log-duration biases
        rep = self.n_heads // self.n_kv_heads
        q = q.float().view(B, self.n_kv_heads, rep, T, self.head_dim)
        scores = (q @ k.float().unsqueeze(2).transpose(-1, -2)) * self.scale  # (B, Hkv, rep, T, S)
        if self.softcap:  # Gemma 2 caps the raw score; the duration bias comes after
            scores = self.softcap * torch.tanh(scores / self.softcap)
        scores = scores + bias[:, None, None]  # duration_bias: + log d_j on visible keys, -inf elsewhere
        probs = self.probs(scores.softmax(dim=-1))  # (B, Hkv, rep, T, S), float32
        out = probs.type_as(v) @ v.unsqueeze(2)  # (B, Hkv, rep, T, hd)
        out = out.reshape(B, self.n_heads, T, self.head_dim).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out)


# ----------------------------------------------------------------------------- MLP


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.act, self.fused = ACTIVATIONS[cfg.quirks.act], cfg.quirks.fused
        if self.fused:
            self.gate_up_proj = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=cfg.mlp_bias)
        else:
            self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.mlp_bias)
            self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x):
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


# ----------------------------------------------------------------------------- block


class Block(nn.Module):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        quirks = cfg.quirks
        norm = lambda: RMSNorm(cfg.dim, cfg.norm_eps, quirks.norm_offset)
        self.norms, self.moe, self.residual = quirks.norms, quirks.moe, cfg.residual_multiplier
        self.self_attn = Attention(cfg, layer)
        if self.moe:  # under the checkpoint's own name
            self.block_sparse_moe = MoE(cfg)
        else:
            self.mlp = MLP(cfg)
        if self.norms != "post":
            self.input_layernorm = norm()
        self.post_attention_layernorm = norm()
        if self.norms != "pre":
            self.post_feedforward_layernorm = norm()
        if self.norms == "sandwich":
            self.pre_feedforward_layernorm = norm()
        # places for forward hooks to see (or replace) the residual stream: free when unhooked
        self.resid_in, self.resid_out = nn.Identity(), nn.Identity()

    def forward(self, x, rope, bias, cache):
        x = self.resid_in(x)  # (B, T, dim): the residual stream entering the block
        if self.norms == "post":  # OLMo 2: each branch's output is normalised, its input is not
            x = x + self.post_attention_layernorm(self.self_attn(x, rope, bias, cache))
            x = x + self.post_feedforward_layernorm(self.feed_forward(x))
        elif self.norms == "sandwich":  # Gemma 2/3: post_attention_layernorm normalises the attention output
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, bias, cache))
            x = x + self.post_feedforward_layernorm(self.feed_forward(self.pre_feedforward_layernorm(x)))
        else:  # Llama: post_attention_layernorm is the norm in front of the MLP
            x = x + self.residual * self.self_attn(self.input_layernorm(x), rope, bias, cache)
            x = x + self.residual * self.feed_forward(self.post_attention_layernorm(x))
        return self.resid_out(x)  # and leaving it

    def feed_forward(self, x):
        return self.block_sparse_moe(x) if self.moe else self.mlp(x)


# ----------------------------------------------------------------------------- model


class Transformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(
            dict(
                # left uninitialised: load() assigns every weight from the checkpoint
                embed_tokens=nn.Embedding(cfg.vocab_size, cfg.dim, _weight=torch.empty(cfg.vocab_size, cfg.dim)),
                layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers)),
                norm=RMSNorm(cfg.dim, cfg.norm_eps, cfg.quirks.norm_offset),
            )
        )
        # tied models read their output projection from the embedding table: no lm_head at all,
        # which keeps the parameter names equal to the checkpoint's (tied ones store no lm_head)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.precision = None  # how load() chose the dtype (a precision.Precision), for reports
        self.embed_scale = cfg.quirks.embed_scale

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw embedding-table rows (no family scaling): what `embeds=` takes, for interpolation."""
        tokens = validate.token_ids(torch.as_tensor(tokens, device=self.device), self.config.vocab_size)
        return self.model.embed_tokens(tokens)

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        *,
        embeds: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        durations: torch.Tensor | None = None,
        rule: str = "right",
        last_only: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) in float32, or (B, 1, vocab) with last_only.

        tokens (B, T) or (T,) ids, or embeds (B, T, dim) raw table rows: exactly one.
        positions, durations: (T,) or (B, T) floats; what is left out, `default_timeline` fills in.
        rule: where a key sits in its interval (t - d, t]: "right" (t), "left" (t - d) or
        "midpoint" (t - d/2); queries sit at t. cache: a KVCache to continue and extend.
        """
        cfg = self.config
        x, pos, dur = validate.inputs(self, tokens, embeds, positions, durations, rule, cache, default_timeline, key_positions)
        B, T = pos.shape  # the new tokens' timeline (B, T), float32
        if self.embed_scale:  # rounded to the model dtype, as the reference models do
            x = x * torch.tensor(cfg.dim**0.5, dtype=x.dtype)
        x = x * cfg.embedding_multiplier if cfg.embedding_multiplier != 1 else x  # Granite
        x = x.expand(B, T, cfg.dim)  # one example may be shared by a batch of timelines
        key_pos = key_positions(pos, dur, rule)  # (B, T)
        if cache is not None and len(cache):  # the whole timeline, a one-example cache shared by the batch
            pos = torch.cat((cache.positions.expand(B, -1), pos), dim=1)  # (B, S)
            dur = torch.cat((cache.durations.expand(B, -1), dur), dim=1)
        length = timeline_length(pos, dur)  # (B,)
        ropes, biases = {}, {}  # per layer kind: sliding or global
        for sliding in sorted(set(cfg.sliding_layers)):
            local = sliding and cfg.rope_local_theta is not None
            inv_freq, factor = inverse_frequencies(cfg, local, length)
            ropes[sliding] = (rotary(pos[:, -T:], inv_freq, factor), rotary(key_pos, inv_freq, factor))
            biases[sliding] = duration_bias(dur, T, cfg.sliding_window if sliding else None)
        try:
            for layer, sliding, rotates in zip(self.model.layers, cfg.sliding_layers, cfg.rope_layers):
                x = layer(x, ropes[sliding] if rotates else None, biases[sliding], cache)
            logits = self.logits(x[:, -1:] if last_only else x)
        except BaseException:  # out of memory, Ctrl-C: the cache stays as it was, and usable
            if cache is not None:
                cache.discard()
            raise
        if cache is not None:
            cache.commit(pos, dur, rule)
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits (..., vocab) of residual-stream vectors (..., dim): final norm, head,
        and the family's soft-cap or scaling. (The logit lens applies it to every layer's.)"""
        cfg = self.config
        logits = self.head(self.model.norm(x)).float()
        if cfg.logit_softcap:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        return logits / cfg.logits_scaling if cfg.logits_scaling != 1 else logits

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Output projection: lm_head, or the embedding table itself for tied models."""
        return self.lm_head(x) if self.lm_head is not None else F.linear(x, self.model.embed_tokens.weight)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations run in (norm weights are never quantized, so theirs says it)."""
        return self.model.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    def generate(self, tokens, max_new_tokens: int, **options) -> list[int]:
        """Continue one prompt; see the module-level `generate` for the options."""
        return generate(self, tokens, max_new_tokens, **options)


# ----------------------------------------------------------------------------- mixture of experts
# Mixtral's MLP: Block builds it in place of MLP when the family's quirks say so.


class Expert(nn.Module):
    """One expert of a mixture: a gated MLP, under Mixtral's names (w1 gate, w3 up, w2 down)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.act = ACTIVATIONS[cfg.quirks.act]
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.w2(self.act(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    """Mixtral's sparse MLP: a router scores every expert for each token, the top k run, and
    their outputs are mixed by the router's softmax renormalised over the chosen k. Pointwise in
    time like any MLP, so durations do not touch it."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.top_k = cfg.experts_per_token
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.n_experts))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])  # (N, dim): every token of every example
        probs = self.gate(flat).float().softmax(dim=-1)  # (N, n_experts), float32
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)  # the tokens routed to expert e
            if len(token):
                out.index_add_(0, token, (expert(flat[token]) * weights[token, slot, None]).type_as(out))
        return out.view_as(x)


# ----------------------------------------------------------------------------- RoPE scalings
# How long-context checkpoints stretch RoPE beyond the context they were trained on. Each takes
# the plain frequencies; load.py fills in every parameter a type reads.

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def scaled_frequencies(inv_freq: torch.Tensor, s: dict, theta: float, length: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(frequencies, attention factor) under the scaling s. dynamic and longrope depend on how
    long each example's timeline is, `length` (B,) (see `timeline_length`): (B, r/2) then."""
    kind, context, rotary_dim = s["rope_type"], s.get("original_max_position_embeddings"), 2 * len(inv_freq)
    if kind == "linear":  # stretch time: all angles divided by the factor
        return inv_freq / s["factor"], 1.0
    if kind == "dynamic":  # NTK: a larger base once the timeline outgrows the context
        grown = length.clamp(min=context) / context  # (B,)
        base = theta * (s["factor"] * grown - (s["factor"] - 1)) ** (rotary_dim / (rotary_dim - 2))
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim
        return 1.0 / base[:, None] ** exponents, 1.0
    if kind == "yarn":  # long wavelengths divided by the factor, short ones kept, a linear ramp between
        ramp = _ramp(rotary_dim, theta, context, s["beta_fast"], s["beta_slow"], s["truncate"])
        return inv_freq / s["factor"] * ramp + inv_freq * (1 - ramp), s["attention_factor"]
    if kind == "longrope":  # per-frequency divisors: the long set once the timeline outgrows the context
        long, short = torch.tensor(s["long_factor"]), torch.tensor(s["short_factor"])
        divisors = torch.where((length > context)[:, None].cpu(), long, short)  # (B, r/2)
        return inv_freq / divisors, s["attention_factor"]
    return llama3_frequencies(inv_freq, s), 1.0


def _ramp(rotary_dim: int, theta: float, context: int, beta_fast: float, beta_slow: float, truncate: bool) -> torch.Tensor:
    """YaRN's ramp (r/2,): 0 for the dims that turn more than beta_fast times over the context, 1
    for those that turn fewer than beta_slow times, linear between."""

    def dim_turning(turns):  # the dim whose wavelength fits `turns` times into the context
        return rotary_dim * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_turning(beta_fast), dim_turning(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    high = high + 0.001 if low == high else high  # no division by 0
    return ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)


def llama3_frequencies(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's scaling: frequencies whose wavelength exceeds context / low_freq_factor divided
    by the factor, those below context / high_freq_factor kept, a smooth blend between. A GGUF
    file stores the result as per-frequency divisors (llama.cpp's rope_freqs tensor)."""
    if "divisors" in s:
        return inv_freq / torch.tensor(s["divisors"], dtype=torch.float32)
    factor, low, high, context = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(medium, smoothed, scaled)


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """What a forward pass leaves for the next: each layer's rotated keys and values, plus the
    timeline (positions, durations) of the tokens they belong to. Grows by concatenation.

    A forward extends the cache only when it succeeds: the layers' new keys are held aside
    (`extended`) and stored together at the end (`commit`), so a pass stopped half-way by an
    error or Ctrl-C leaves the cache as it was. A one-example cache may be continued by a batch:
    it is shared by every example (expanded, not copied)."""

    def __init__(self, rule: str = "right"):
        self.rule = rule
        self.keys: dict[int, torch.Tensor] = {}  # layer -> (B, n_kv_heads, S, head_dim), rotated
        self.values: dict[int, torch.Tensor] = {}
        self.positions: torch.Tensor | None = None  # (B, S) float32
        self.durations: torch.Tensor | None = None  # (B, S) float32
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return 0 if self.positions is None else self.positions.shape[1]

    @property
    def batch_size(self) -> int | None:
        return None if self.positions is None else self.positions.shape[0]

    def extended(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys and values of a layer followed by new ones (B, Hkv, S + T, hd), held
        until commit."""
        if layer in self.keys:
            old_k, old_v = self.keys[layer], self.values[layer]
            if old_k.shape[0] != k.shape[0]:  # a one-example cache continued by a batch
                old_k, old_v = old_k.expand(k.shape[0], *old_k.shape[1:]), old_v.expand(v.shape[0], *old_v.shape[1:])
            k, v = torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2)
        self._pending[layer] = (k, v)
        return k, v

    def commit(self, positions: torch.Tensor, durations: torch.Tensor, rule: str) -> None:
        """Store what the pass computed: every layer's keys and values, and the whole timeline
        (positions and durations (B, S + T))."""
        for layer, (k, v) in self._pending.items():
            self.keys[layer], self.values[layer] = k, v
        self.positions, self.durations, self.rule = positions, durations, rule
        self._pending = {}

    def discard(self) -> None:
        self._pending = {}

    def expand(self, batch_size: int) -> KVCache:
        """A cache of batch_size copies of this one-example cache, sharing its memory."""
        if self.batch_size != 1:
            raise ValueError(f"only a cache of one example can be expanded, this one holds {self.batch_size}")
        out = KVCache(self.rule)
        grow = lambda t: t.expand(batch_size, *t.shape[1:])
        out.keys = {i: grow(k) for i, k in self.keys.items()}
        out.values = {i: grow(v) for i, v in self.values.items()}
        out.positions, out.durations = grow(self.positions), grow(self.durations)
        return out


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(
    model: Transformer,
    tokens,
    max_new_tokens: int,
    *,
    positions=None,
    durations=None,
    rule: str = "right",
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop: set[int] | None = None,
) -> list[int]:
    """Continue one prompt (T,) that may live on a continuous timeline; returns the new ids.

    The prompt is run once into a KV cache; each new token then sits at the last position
    + 1 with duration 1 and costs one single-token forward. temperature 0 is greedy
    (argmax); otherwise sample from softmax(logits / temperature), optionally among the
    top_k, with a torch.Generator seeded by `seed`. Stops before any id in `stop` (which is
    not returned).
    """
    tokens = validate.generation(tokens, max_new_tokens, temperature, top_k)
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
    cache = KVCache(rule)
    logits = model(tokens, positions=positions, durations=durations, rule=rule, last_only=True, cache=cache)
    if logits.shape[0] != 1:
        raise ValueError(
            f"generate continues one prompt on one timeline, but the timeline given holds {logits.shape[0]} rows; run one generate per row"
        )
    out: list[int] = []
    for _ in range(max_new_tokens):
        next_id = sample(logits[0, -1], temperature, top_k, generator)
        if stop and next_id in stop:
            break
        out.append(next_id)
        if len(out) == max_new_tokens:
            break
        step = torch.tensor([next_id], device=model.device)
        logits = model(step, positions=cache.positions[0, -1:] + 1.0, durations=torch.ones(1), rule=rule, last_only=True, cache=cache)
    return out


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> int:
    """One id from a (vocab,) row of logits: argmax at temperature 0, else a softmax draw."""
    validate.sampling(temperature, top_k)
    if temperature == 0:
        return int(logits.argmax())
    # relative to the largest logit, so that a tiny temperature gives 0 and -inf, never inf - inf
    logits = (logits.float() - logits.float().max()) / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
