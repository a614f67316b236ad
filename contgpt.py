"""contgpt: pretrained Llama-family language models run as Continuous Causal Transformers.

One file, read top to bottom as the model: families and config; RMSNorm; RoPE, and right after
it the continuous time (where each key sits on the time axis, and the log-duration bias);
attention, MLP (and a mixture of experts), block, the transformer's forward; then the RoPE
scalings of long-context checkpoints, the KV cache, generation, and at the end the input checks
that forward reaches through one call. It uses Hugging Face parameter names as
they are (load.py reads checkpoints into it) and, with unit durations, computes exactly the
ordinary model. How it differs from an ordinary Llama:

1. Positions are real numbers. RoPE angles are computed in float32 from the positions given on
   each call; there is no integer-indexed cos/sin table (which cannot hold fractional positions).
2. Every token lasts for a duration d > 0: it holds its embedding on the interval (t - d, t].
   Attention over past time, integrated with the right-endpoint rectangle rule, is ordinary
   softmax attention plus log(d_j) on every score of key j (`duration_bias`). d = 1 is the
   ordinary model and d = 0 hides a key. `rule` moves a key's rotary position inside its
   interval (`RULES`).
3. Inputs may be embedding vectors instead of token ids (raw rows of the embedding table, so a
   word halfway between two words is just a mixed row); family scalings are applied here.
4. The KV cache keeps each key's position and duration beside its rotated key and value, so
   generation can continue a prefix that lives on a continuous timeline.
5. Mistral, Qwen2/3, Gemma 1/2/3, Phi-3, SmolLM3, OLMo 2, Granite and Mixtral differ from Llama
   only through the FAMILIES table and config values (windows, soft-caps, RoPE bases and
   scalings, multipliers, experts), not through branches on a family's name.
6. The attention weights pass through a named identity module (`self_attn.probs`), and so does
   the residual stream entering and leaving each block (`resid_in`, `resid_out`), so ordinary
   forward hooks can watch or replace them (the explorer, lens.py) at no cost when none is
   registered.

Sliding windows count tokens (sequence indices), as in the discrete models, not units of time.

Precision. Weights and the matrix multiplies of the projections, the MLP and the output head
run in the model's dtype (float32, or bfloat16 where the hardware has it; int8 weights with
16-bit activations through int8.Int8Linear). What decides the continuous behaviour runs in
float32 whatever that dtype: RMSNorm's statistics, RoPE angles and the rotation itself, the
attention scores (queries and keys are upcast before their product), the soft-cap, the
log-duration bias and the softmax. Keys and values are cached in the model's dtype, and the
logits are returned as float32. (So a 16-bit model is continuous only up to its rounding: a
shift of every position, exactly invariant in float32 to 1e-6, moves bf16 outputs by ~1e-2.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    global_every: int = 0  # default layer pattern: every n-th layer global, the rest sliding
    tied: bool = False  # whether the output head is the embedding table when a config omits it


_GEMMA = dict(act="gelu_tanh", norm_offset=1.0, embed_scale=True, tied=True)
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
    "gemma2": Quirks(**_GEMMA, norms="sandwich", global_every=2),
    "gemma3_text": Quirks(**_GEMMA, norms="sandwich", qk_norm="head", global_every=6),
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
        check_config(self)

    @property
    def quirks(self) -> Quirks:
        return FAMILIES[self.family]


# ----------------------------------------------------------------------------- norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float):
        super().__init__()
        self.eps, self.offset = eps, offset
        # 1 - offset, built by full: arithmetic on the meta device, where load() builds, imports torch._dynamo (2 s)
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
    return positions - RULES[rule] * durations


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
    if blind := _first(torch.isneginf(bias).all(dim=-1)):
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
        self.layer, self.cfg = layer, cfg
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
        if self.cfg.quirks.fused:
            q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x, rope, duration_bias, cache: KVCache | None):
        B, T, _ = x.shape
        q, k, v = self.project(x)
        if self.cfg.quirks.qk_norm == "all":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.cfg.quirks.qk_norm == "head":
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
        if self.cfg.attn_softcap:  # Gemma 2 caps the raw score; the duration bias comes after
            scores = self.cfg.attn_softcap * torch.tanh(scores / self.cfg.attn_softcap)
        scores = scores + duration_bias[:, None, None]  # + log d_j on visible keys, -inf elsewhere
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


# ----------------------------------------------------------------------------- block


class Block(nn.Module):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        quirks = cfg.quirks
        norm = lambda: RMSNorm(cfg.dim, cfg.norm_eps, quirks.norm_offset)  # noqa: E731
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

    def forward(self, x, rope, duration_bias, cache):
        x = self.resid_in(x)  # (B, T, dim): the residual stream entering the block
        if self.norms == "post":  # OLMo 2: each branch's output is normalised, its input is not
            x = x + self.post_attention_layernorm(self.self_attn(x, rope, duration_bias, cache))
            x = x + self.post_feedforward_layernorm(self.feed_forward(x))
        elif self.norms == "sandwich":  # Gemma 2/3: post_attention_layernorm normalises the attention output
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, duration_bias, cache))
            x = x + self.post_feedforward_layernorm(self.feed_forward(self.pre_feedforward_layernorm(x)))
        else:  # Llama: post_attention_layernorm is the norm in front of the MLP
            x = x + self.residual * self.self_attn(self.input_layernorm(x), rope, duration_bias, cache)
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
                # left uninitialised: load() assigns every weight from the checkpoint (drawing random rows
                # on the meta device would go through Python and import torch._dynamo: 2 s per load)
                embed_tokens=nn.Embedding(cfg.vocab_size, cfg.dim, _weight=torch.empty(cfg.vocab_size, cfg.dim)),
                layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers)),
                norm=RMSNorm(cfg.dim, cfg.norm_eps, cfg.quirks.norm_offset),
            )
        )
        # tied models read their output projection from the embedding table: no lm_head at all,
        # which keeps the parameter names equal to the checkpoint's (tied ones store no lm_head)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.precision = None  # how load() chose the dtype (a precision.Precision), for reports

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations run in (norm weights are never quantized, so theirs says it)."""
        return self.model.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw embedding-table rows (no family scaling): what `embeds=` takes, for interpolation."""
        tokens = checked_token_ids(torch.as_tensor(tokens, device=self.device), self.config.vocab_size)
        return self.model.embed_tokens(tokens)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Output projection: lm_head, or the embedding table itself for tied models."""
        return self.lm_head(x) if self.lm_head is not None else F.linear(x, self.model.embed_tokens.weight)

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
        positions, durations: (T,) or (B, T) floats. Defaults give the discrete model: positions
        0..T-1 (after a cache's last one), durations 1. Durations alone: positions are their
        running sum minus 1. Positions alone: durations are the gaps (the first is 1).
        rule: where a key's rotary position sits in its interval (t - d, t]: "right" (t, the
        paper's), "left" (t - d) or "midpoint" (t - d/2). Queries always sit at t.
        cache: a KVCache to continue and extend (the new tokens follow the cached ones).
        """
        cfg = self.config
        x, pos, dur = checked_inputs(self, tokens, embeds, positions, durations, rule, cache)
        B, T = pos.shape  # the new tokens' timeline (B, T), float32
        if cfg.quirks.embed_scale:  # rounded to the model dtype, as the reference models do
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

    def generate(self, tokens, max_new_tokens: int, **options) -> list[int]:
        """Continue one prompt; see the module-level `generate` for the options."""
        return generate(self, tokens, max_new_tokens, **options)


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
        grow = lambda t: t.expand(batch_size, *t.shape[1:])  # noqa: E731
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
    tokens = checked_generation(tokens, max_new_tokens, temperature, top_k)
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
    cache = KVCache(rule)
    logits = model(tokens, positions=positions, durations=durations, rule=rule, last_only=True, cache=cache)
    if logits.shape[0] != 1:
        raise ValueError(f"generate continues one prompt on one timeline, but the timeline given holds {logits.shape[0]} "
                         f"rows; run one generate per row")  # fmt: skip
    out: list[int] = []
    for _ in range(max_new_tokens):
        next_id = sample(logits[0, -1], temperature, top_k, generator)
        if stop and next_id in stop:
            break
        out.append(next_id)
        if len(out) == max_new_tokens:
            break
        step = torch.tensor([next_id], device=model.device)
        logits = model(step, positions=cache.positions[0, -1:] + 1.0, durations=torch.ones(1), rule=rule,
                       last_only=True, cache=cache)  # fmt: skip
    return out


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> int:
    """One id from a (vocab,) row of logits: argmax at temperature 0, else a softmax draw."""
    check_sampling(temperature, top_k)
    if temperature == 0:
        return int(logits.argmax())
    # relative to the largest logit, so that a tiny temperature gives 0 and -inf, never inf - inf
    logits = (logits.float() - logits.float().max()) / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


# ----------------------------------------------------------------------------- input checks
# Everything a caller passes is checked here, after the cast to what the model computes with,
# so that a bad input raises a ValueError that names it instead of producing NaN or a silently
# different answer. Errors name the argument, the first offending index and the accepted range.

MAX_POSITION = 2.0**20  # |positions| below this: float32 then places a token to 1/16 of a unit or better


def checked_inputs(model: Transformer, tokens, embeds, positions, durations, rule: str, cache: KVCache | None):
    """(x (B0, T, dim) unscaled input embeddings, positions (B, T), durations (B, T)) in the
    model's dtype and float32, every input checked; B0 is 1 or B."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if cache is not None and len(cache) and cache.rule != rule:
        raise ValueError(f"this cache holds keys placed by rule {cache.rule!r}, not {rule!r}")
    x = checked_embeddings(model, tokens, embeds)  # (B0, T, dim)
    pos, dur = timeline(x.shape[0], x.shape[1], positions, durations, cache, x.device)
    if rule != "right":  # |t| < 2**20 and d finite, so keys are finite, but may leave the range
        name = f"key positions (rule {rule!r}: position - {'duration' if rule == 'left' else 'duration / 2'})"
        _check_position_range(name, key_positions(pos, dur, rule))
    return x, pos, dur


def checked_embeddings(model: Transformer, tokens, embeds) -> torch.Tensor:
    """Raw embedding rows (B, T, dim) in the model's dtype, from token ids or given rows."""
    dim = model.config.dim
    if (tokens is None) == (embeds is None):
        raise ValueError("give exactly one of tokens= or embeds=")
    if tokens is not None:
        tokens = torch.as_tensor(tokens, device=model.device)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or 0 in tokens.shape:
            raise ValueError(f"tokens must have shape (T,) or (B, T) with B, T > 0, not {tuple(tokens.shape)}")
        return model.embed(tokens)
    embeds = torch.as_tensor(embeds)
    if embeds.dim() == 2:
        embeds = embeds[None]
    if embeds.dim() != 3 or embeds.shape[-1] != dim or 0 in embeds.shape:
        raise ValueError(f"embeds must have shape (T, {dim}) or (B, T, {dim}) with B, T > 0, not {tuple(embeds.shape)}")
    if not embeds.dtype.is_floating_point:
        raise ValueError(f"embeds must be floating point, not {embeds.dtype}")
    x = embeds.to(device=model.device, dtype=model.dtype)
    if bad := _first(~torch.isfinite(x).all(dim=-1)):  # after the cast: 1e39 is finite in float64 only
        raise ValueError(f"embeds[{bad[0]}, {bad[1]}] holds NaN or infinite values in {x.dtype}, the model's dtype")
    return x


def checked_token_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """tokens as int64 (any integer dtype is accepted), each checked to be in the vocabulary."""
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, not {tokens.dtype}")
    if bad := _first((tokens < 0) | (tokens >= vocab_size)):
        raise ValueError(f"token id {tokens[bad].item()} at index {bad} is outside the vocabulary [0, {vocab_size})")
    return tokens.long()


def timeline(B: int, T: int, positions, durations, cache: KVCache | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and durations (B', T) in float32 for T new tokens, validated after the cast to
    float32 (what the model computes with).

    Defaults reproduce the discrete model: positions 0..T-1 (continuing after a cache), duration 1.
    Durations alone: positions are their running sum minus 1 (after the cache's last position).
    Positions alone: each duration is the gap to the previous position; the first one is 1
    (or the gap to the cache's last position); positions must then strictly increase.
    Positions may be negative; every |position| must stay below MAX_POSITION. Durations are
    >= 0 (0 hides a token) and finite. B' is the largest batch among the input, the timeline and
    the cache; each of them must hold B' examples or one, shared by all.
    """
    last = None if cache is None or not len(cache) else cache.positions[:, -1:]  # (B, 1)
    pos = _as_timeline("positions", positions, T, device)
    dur = _as_timeline("durations", durations, T, device)
    batches = {"input": B} | {k: v.shape[0] for k, v in (("positions", pos), ("durations", dur), ("cache", last)) if v is not None}
    n = max(batches.values())
    if any(b not in (1, n) for b in batches.values()):
        raise ValueError(f"batch sizes do not match: {batches}; each must be {n} or 1")
    if dur is not None:
        _check_finite("durations", dur)
        if bad := _first(dur < 0):
            raise ValueError(f"durations must be >= 0, but durations[{bad[0]}, {bad[1]}] = {dur[bad].item()}")
    if pos is None:
        if dur is None:
            dur = torch.ones(1, T, device=device)
        start = last if last is not None else torch.full((1, 1), -1.0, device=device)
        pos = start + dur.cumsum(dim=1)
        _check_finite("positions (the running sum of the durations)", pos)
    elif dur is None:
        _check_finite("positions", pos)
        first = pos[:, :1] - last if last is not None else torch.ones_like(pos[:, :1])  # (1 or n, 1)
        rows = max(first.shape[0], pos.shape[0])
        dur = torch.cat((first.expand(rows, 1), (pos[:, 1:] - pos[:, :-1]).expand(rows, T - 1)), dim=1)
        if bad := _first(dur <= 0):
            raise ValueError(
                f"positions alone imply durations as gaps, but position {bad[1]} of example {bad[0]} does not come after "
                f"the one before it (gap {dur[bad].item()}); pass durations= too, for a timeline that goes back in time "
                f"or a token of duration 0"
            )
        _check_finite("durations (the gaps between positions)", dur)
    _check_finite("positions", pos)
    _check_position_range("positions", pos)
    return pos.expand(n, T), dur.expand(n, T)


def _as_timeline(name: str, value, T: int, device) -> torch.Tensor | None:
    if value is None:
        return None
    given = torch.as_tensor(value, device=device)
    if not (given.dtype.is_floating_point or given.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
        raise ValueError(f"{name} must be real numbers, not {given.dtype}")
    if given.dim() not in (1, 2) or given.shape[-1] != T:
        raise ValueError(f"{name} must have shape ({T},) or (B, {T}) to match the input, not {tuple(given.shape)}")
    value = given.to(torch.float32)
    if value.dim() == 1:
        value, given = value[None], given[None]
    if value.shape[0] == 0:
        raise ValueError(f"{name} hold an empty batch {tuple(value.shape)}")
    if bad := _first((given > 0) & (value == 0)):  # float64 below 1.4e-45: 0 would hide the token
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}] = {given[bad].item()} rounds to 0 in float32, the model's timeline "
                         f"dtype (smallest positive value 1.4e-45); give exactly 0 to hide a token")  # fmt: skip
    return value


def checked_generation(tokens, max_new_tokens, temperature, top_k) -> torch.Tensor:
    """The prompt (T,) of a generate call, its length and sampling settings checked."""
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"generate continues one prompt of shape (T,), not {tuple(tokens.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, not {max_new_tokens!r}")
    check_sampling(temperature, top_k)
    return tokens


def check_sampling(temperature: float, top_k: int | None) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, not {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, not {top_k!r}")


def check_config(cfg: Config) -> None:
    if cfg.family not in FAMILIES:
        raise ValueError(f"unsupported architecture {cfg.family!r}; supported: {', '.join(FAMILIES)}")
    rope_type = (cfg.rope_scaling or {}).get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported RoPE scaling {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    if len(cfg.sliding_layers) != cfg.n_layers or len(cfg.rope_layers) != cfg.n_layers:
        raise ValueError(f"{len(cfg.sliding_layers)} layer types and {len(cfg.rope_layers)} RoPE flags given for {cfg.n_layers} layers")
    if cfg.quirks.moe and not 1 <= cfg.experts_per_token <= cfg.n_experts:
        raise ValueError(f"a mixture of experts routes each token to 1 to n_experts experts, not {cfg.experts_per_token} "
                         f"of {cfg.n_experts}")  # fmt: skip
    if cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"{cfg.n_heads} query heads cannot share {cfg.n_kv_heads} key/value heads evenly")


def _first(mask: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first True in mask, or None: errors name the first offending element."""
    hits = mask.nonzero()
    return tuple(hits[0].tolist()) if len(hits) else None


def _check_finite(name: str, value: torch.Tensor) -> None:
    if bad := _first(~torch.isfinite(value)):
        raise ValueError(f"{name} must be finite in float32, but at [{bad[0]}, {bad[1]}] it is {value[bad].item()}")


def _check_position_range(name: str, value: torch.Tensor) -> None:
    if bad := _first(value.abs() >= MAX_POSITION):
        raise ValueError(
            f"{name} must lie within +-{MAX_POSITION:.0f} (2**20), but at [{bad[0]}, {bad[1]}] it is {value[bad].item()}: "
            f"float32 no longer resolves a fraction of a token there (shifting every position by 1e6 moves the "
            f"logits by 2e-2, although the model is shift invariant); shift the timeline towards 0"
        )
