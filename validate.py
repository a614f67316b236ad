"""The input checks of contgpt.py: everything a caller gives the model, its generation and its
config is checked here, after the cast to what the model computes with, so that a bad input
raises a ValueError that names it (the argument, the first offending index, the accepted range)
and says how to fix it, instead of producing NaN or a silently different answer.

contgpt.py reaches it through one call per entry point: `inputs` from Transformer.forward,
`token_ids` from Transformer.embed, `generation` and `sampling` from generate, `config` from
Config. It imports nothing from contgpt.py: what a check needs of the model's semantics (the
default timeline, where a rule puts the keys, the known families) is passed in.
"""

from __future__ import annotations

import math

import torch

MAX_POSITION = 2.0**20  # |positions| below this: float32 then places a token to 1/16 of a unit or better


def inputs(model, tokens, embeds, positions, durations, rule: str, cache, fill, place):
    """(x (B0, T, dim) raw input embeddings in the model's dtype, positions (B, T), durations
    (B, T) in float32), every input checked; B0 is 1 or B. `fill(positions, durations, last)` is
    the model's default timeline and `place(positions, durations, rule)` where a rule puts the
    keys (contgpt.default_timeline and contgpt.key_positions)."""
    if cache is not None and len(cache) and cache.rule != rule:
        raise ValueError(f"this cache holds keys placed by rule {cache.rule!r}, not {rule!r}")
    x = embeddings(model, tokens, embeds)  # (B0, T, dim)
    pos, dur = timeline(x.shape[0], x.shape[1], positions, durations, cache, x.device, fill)
    if rule != "right":  # |t| < 2**20 and d finite, so keys are finite, but may leave the range
        name = f"key positions (rule {rule!r}: position - {'duration' if rule == 'left' else 'duration / 2'})"
        _check_position_range(name, place(pos, dur, rule))  # an unknown rule raises in place()
    return x, pos, dur


def embeddings(model, tokens, embeds) -> torch.Tensor:
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
    if bad := first_index(~torch.isfinite(x).all(dim=-1)):  # after the cast: 1e39 is finite in float64 only
        raise ValueError(f"embeds[{bad[0]}, {bad[1]}] holds NaN or infinite values in {x.dtype}, the model's dtype")
    return x


def token_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """tokens as int64 (any integer dtype is accepted), each checked to be in the vocabulary."""
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, not {tokens.dtype}")
    if bad := first_index((tokens < 0) | (tokens >= vocab_size)):
        raise ValueError(f"token id {tokens[bad].item()} at index {bad} is outside the vocabulary [0, {vocab_size})")
    return tokens.long()


def timeline(B: int, T: int, positions, durations, cache, device, fill) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and durations (B', T) in float32 for T new tokens, checked after the cast to
    float32 (what the model computes with), and what the caller left out filled in by
    `fill` (the default timeline) and checked too.

    Positions may be negative; every |position| must stay below MAX_POSITION. Durations are
    >= 0 (0 hides a token) and finite. Positions given alone must strictly increase (their
    gaps become the durations). B' is the largest batch among the input, the timeline and the
    cache; each of them must hold B' examples or one, shared by all.
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
        if bad := first_index(dur < 0):
            raise ValueError(f"durations must be >= 0, but durations[{bad[0]}, {bad[1]}] = {dur[bad].item()}")
    if pos is not None:
        _check_finite("positions", pos)
    given = pos is not None, dur is not None
    pos, dur = fill(pos, dur, last, T, device)
    if given == (False, True):
        _check_finite("positions (the running sum of the durations)", pos)
    if given == (True, False):
        if bad := first_index(dur <= 0):
            raise ValueError(
                f"positions alone imply durations as gaps, but position {bad[1]} of example {bad[0]} does not come after "
                f"the one before it (gap {dur[bad].item()}); pass durations= too, for a timeline that goes back in time "
                f"or a token of duration 0"
            )
        _check_finite("durations (the gaps between positions)", dur)
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
    if bad := first_index((given > 0) & (value == 0)):  # float64 below 1.4e-45: 0 would hide the token
        raise ValueError(
            f"{name}[{bad[0]}, {bad[1]}] = {given[bad].item()} rounds to 0 in float32, the model's timeline "
            f"dtype (smallest positive value 1.4e-45); give exactly 0 to hide a token"
        )
    return value


def generation(tokens, max_new_tokens, temperature, top_k) -> torch.Tensor:
    """The prompt (T,) of a generate call, its length and sampling settings checked."""
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"generate continues one prompt of shape (T,), not {tuple(tokens.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, not {max_new_tokens!r}")
    sampling(temperature, top_k)
    return tokens


def sampling(temperature: float, top_k: int | None) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, not {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, not {top_k!r}")


def config(cfg, families, rope_types) -> None:
    """A Config's values against the families and RoPE scalings the model knows."""
    if cfg.family not in families:
        raise ValueError(f"unsupported architecture {cfg.family!r}; supported: {', '.join(families)}")
    rope_type = (cfg.rope_scaling or {}).get("rope_type", "default")
    if rope_type not in rope_types:
        raise ValueError(f"unsupported RoPE scaling {rope_type!r}; supported: {', '.join(rope_types)}")
    if len(cfg.sliding_layers) != cfg.n_layers or len(cfg.rope_layers) != cfg.n_layers:
        raise ValueError(f"{len(cfg.sliding_layers)} layer types and {len(cfg.rope_layers)} RoPE flags given for {cfg.n_layers} layers")
    if families[cfg.family].moe and not 1 <= cfg.experts_per_token <= cfg.n_experts:
        raise ValueError(f"a mixture of experts routes each token to 1 to n_experts experts, not {cfg.experts_per_token} of {cfg.n_experts}")
    if cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"{cfg.n_heads} query heads cannot share {cfg.n_kv_heads} key/value heads evenly")


def first_index(mask: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first True in mask, or None: errors name the first offending element."""
    hits = mask.nonzero()
    return tuple(hits[0].tolist()) if len(hits) else None


def _check_finite(name: str, value: torch.Tensor) -> None:
    if bad := first_index(~torch.isfinite(value)):
        raise ValueError(f"{name} must be finite in float32, but at [{bad[0]}, {bad[1]}] it is {value[bad].item()}")


def _check_position_range(name: str, value: torch.Tensor) -> None:
    if bad := first_index(value.abs() >= MAX_POSITION):
        raise ValueError(
            f"{name} must lie within +-{MAX_POSITION:.0f} (2**20), but at [{bad[0]}, {bad[1]}] it is {value[bad].item()}: "
            f"float32 no longer resolves a fraction of a token there (shifting every position by 1e6 moves the "
            f"logits by 2e-2, although the model is shift invariant); shift the timeline towards 0"
        )
