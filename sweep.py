"""The sweep engine: next-token logits at the last position for many timelines of one prompt.

An experiment asks the same question under N timelines (a span shrunk to 100 durations, a word
interpolated at 40 points). Run naively, that is N full forwards with logits at every position.
Here:
- the tokens before the first one whose input or timeline differs between points are computed
  once, and their keys and values are shared by every point (a KV cache expanded, not copied);
- the points run as batches of per-example timelines, the batch size chosen from free memory;
- logits are computed only at the last position, never the full (B, T, vocab) tensor.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from tqdm import tqdm

import validate
from contgpt import KVCache, Transformer, default_timeline

CPU_BATCH_TOKENS = 1200  # rows per matmul: about the fastest measured here (2 cores, float32 and bf16); more costs memory


@torch.no_grad()
def last_logits(
    model: Transformer,
    tokens=None,
    *,
    embeds=None,
    positions=None,
    durations=None,
    rule: str = "right",
    batch_size: int | None = None,
    share_prefix: bool = True,
    progress: bool | str | Callable[[int, int], None] = False,
) -> torch.Tensor:
    """Logits (N, vocab), float32, of the last position for N sweep points.

    Each of tokens (T,) or (N, T), embeds (T, dim) or (N, T, dim), positions and durations
    (T,) or (N, T) is shared by all points or given per point; N is the largest leading size.
    Defaults and checks are those of the model's forward. batch_size None: from free memory.
    share_prefix=False runs every token of every point (the reference the tests compare with).
    progress: a tqdm bar over points (a string is its label), or a function called with
    (points done, points) after each batch.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (automatic) or an integer >= 1, not {batch_size!r}")
    per_point, n_points, T = _checked_points(model, tokens=tokens, embeds=embeds, positions=positions, durations=durations)
    prefix = shared_prefix_length(per_point) if share_prefix else 0
    prefix = min(prefix, T - 1)  # at least the last token runs for every point: its logits are read
    cache = None
    if prefix:
        cache = KVCache(rule)
        model(**_slice(per_point, slice(0, 1), slice(0, prefix)), rule=rule, cache=cache, last_only=True)  # keys only
    size = batch_size or auto_batch_size(model, n_points, T - prefix, T)
    return _in_batches(model, per_point, n_points, slice(prefix, T), cache, size, rule, progress)


def _checked_points(model: Transformer, **inputs) -> tuple[dict, int, int]:
    """The sweep's inputs checked and on the model's device, each (1 or N, T, ...), with the
    model's default timeline made explicit; and N points, T tokens."""
    if (inputs["tokens"] is None) == (inputs["embeds"] is None):
        raise ValueError("give exactly one of tokens= or embeds=")
    per_point = {k: _per_point(k, v) for k, v in inputs.items() if v is not None}
    n_points = max(v.shape[0] for v in per_point.values())
    rows = {k: v.shape[0] for k, v in per_point.items()}
    if any(r not in (1, n_points) for r in rows.values()):
        raise ValueError(f"every input must hold one row (shared by all points) or one per point, {n_points}; got {rows}")
    lengths = {k: v.shape[1] for k, v in per_point.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every input must cover the same tokens; lengths {lengths}")
    T = next(iter(lengths.values()))
    if n_points == 0 or T == 0:
        raise ValueError(f"a sweep needs at least one point and one token, not {n_points} points of {T} tokens")
    if "positions" not in per_point or "durations" not in per_point:  # the model's defaults, made explicit
        pos, dur = validate.timeline(1, T, per_point.get("positions"), per_point.get("durations"), None, "cpu", default_timeline)
        per_point["positions"], per_point["durations"] = pos, dur
    return {k: v.to(model.device) for k, v in per_point.items()}, n_points, T


def _in_batches(model, per_point: dict, n_points: int, columns: slice, cache, size: int, rule: str, progress) -> torch.Tensor:
    """The last position's logits (N, vocab) of every point, `size` points per forward, each
    continuing the shared prefix's cache (if any) over the given token columns."""
    out = []
    label = progress if isinstance(progress, str) else "sweep"
    report = progress if callable(progress) else None
    with tqdm(total=n_points, desc=label, unit="pt", disable=not progress or report is not None, leave=False) as bar:
        for start in range(0, n_points, size):
            rows = slice(start, min(start + size, n_points))
            n = rows.stop - rows.start
            logits = model(**_slice(per_point, rows, columns), rule=rule, last_only=True, cache=cache.expand(n) if cache else None)
            out.append(logits[:, 0])
            bar.update(n)
            if report:
                report(rows.stop, n_points)
    return torch.cat(out)


def _per_point(name: str, value) -> torch.Tensor:
    """A (1, T, ...) or (N, T, ...) tensor: the leading axis counts points (1 = shared)."""
    value = torch.as_tensor(value)
    core = 2 if name == "embeds" else 1  # embeds carry a trailing feature axis
    if value.dim() not in (core, core + 1):
        shape = "(T, dim) or (N, T, dim)" if name == "embeds" else "(T,) or (N, T)"
        raise ValueError(f"{name} must have shape {shape}, not {tuple(value.shape)}")
    return value[None] if value.dim() == core else value


def _slice(per_point: dict, rows: slice, cols: slice) -> dict:
    """Inputs for some points and some token columns; shared inputs stay shared."""
    return {k: (v if v.shape[0] == 1 else v[rows])[:, cols] for k, v in per_point.items()}


def shared_prefix_length(per_point: dict) -> int:
    """Number of leading tokens whose inputs and timeline are the same for every point."""
    T = next(iter(per_point.values())).shape[1]
    same = torch.ones(T, dtype=torch.bool, device=next(iter(per_point.values())).device)
    for v in per_point.values():
        if v.shape[0] > 1:
            equal = v == v[:1]
            same &= equal.reshape(v.shape[0], T, -1).all(dim=2).all(dim=0)
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else T


def auto_batch_size(model: Transformer, n_points: int, new_tokens: int, total_tokens: int) -> int:
    """As many points per batch as fit in a quarter of free memory (at most 1 GiB on the CPU,
    and about CPU_BATCH_TOKENS new tokens, past which bigger matmuls are no faster), then
    evened out so that the last batch is not a small remainder."""
    cfg = model.config
    itemsize = torch.finfo(model.dtype).bits // 8
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * total_tokens * itemsize  # keys and values, all layers
    activations = new_tokens * (3 * cfg.hidden_dim + 6 * cfg.dim) * 4  # MLP and residual, float32
    scores = 2 * cfg.n_heads * new_tokens * total_tokens * 4  # scores and probabilities
    per_point = kv + activations + scores + 2 * cfg.vocab_size * 4  # and its logits
    if model.device.type == "cuda":
        fit = torch.cuda.mem_get_info(model.device)[0] // 2 // per_point
    else:
        budget = min(free_memory() // 4, 1 << 30)
        fit = min(budget // per_point, max(1, CPU_BATCH_TOKENS // max(new_tokens, 1)))
    fit = int(max(1, min(n_points, fit)))
    batches = -(-n_points // fit)
    return -(-n_points // batches)


def free_memory() -> int:
    """Bytes of memory available to this process (Linux's MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
