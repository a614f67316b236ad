"""Looking inside: the residual stream, the logit lens and activation patching, on contgpt's hook points.

Every block of contgpt.Transformer passes its residual stream through two identity modules,
`resid_in` and `resid_out`, so an ordinary forward hook can read or replace it; nothing here
changes the model, and every hook is removed when a function returns, also on an error.

    stream = residuals(model, tokens, durations=d)          # (n_layers, B, T, dim): each block's output
    lens = logit_lens(model, tokens, durations=d)           # (n_layers, B, vocab): each layer's answer so far
    patched = patch(model, source=dict(tokens=t, durations=d_a), target=dict(tokens=t, durations=d_b),
                    layers=[12], positions=[5, 6])          # run B with A's residual at layer 12, tokens 5-6
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch

from contgpt import Transformer


@contextmanager
def hooked(model: Transformer, point: str, hook, layers: Iterable[int]):
    """A forward hook hook(layer, output) -> output or None on `resid_in` or `resid_out` of the
    given layers, for the duration of the block."""
    if point not in ("resid_in", "resid_out"):
        raise ValueError(f"point must be resid_in or resid_out, not {point!r}")
    blocks = model.model.layers
    layers = list(layers)
    if bad := [i for i in layers if not 0 <= i < len(blocks)]:
        raise ValueError(f"layer {bad[0]} is not a layer of this model (0 to {len(blocks) - 1})")
    handles = [getattr(blocks[i], point).register_forward_hook(lambda module, args, out, i=i: hook(i, out)) for i in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def residuals(model: Transformer, tokens=None, *, point: str = "resid_out", **inputs) -> torch.Tensor:
    """The residual stream (n_layers, B, T, dim) at `point` of every block for one forward call
    (tokens and the forward's keyword arguments, as model() takes them)."""
    seen: dict[int, torch.Tensor] = {}
    with hooked(model, point, lambda i, out: seen.__setitem__(i, out), range(len(model.model.layers))):
        model(tokens, **inputs)
    return torch.stack([seen[i] for i in range(len(seen))])


@torch.no_grad()
def logit_lens(model: Transformer, tokens=None, *, position: int = -1, **inputs) -> torch.Tensor:
    """What each layer would answer if the model stopped there: every block's output at
    `position`, through the final norm and the output head (Transformer.logits). Float32 logits
    (n_layers, B, vocab); the last layer's are the model's own."""
    stream = residuals(model, tokens, **inputs)  # (L, B, T, dim)
    return model.logits(stream[:, :, position])


@torch.no_grad()
def patch(model: Transformer, source: dict, target: dict, layers: Iterable[int], positions=None, point: str = "resid_out") -> torch.Tensor:
    """Activation patching: the logits (B, T, vocab) of the `target` run with the residual
    stream at `point` of the given layers (at the given token positions, default all) taken
    from the `source` run. source and target are model() keyword arguments (tokens=, embeds=,
    positions=, durations=, ...) over the same number of tokens, so positions line up."""
    layers = list(layers)
    recorded = {}
    with hooked(model, point, lambda i, out: recorded.__setitem__(i, out), layers):
        model(**source)
    where = slice(None) if positions is None else torch.as_tensor(positions)

    def replace(i, out):
        if recorded[i].shape != out.shape:
            raise ValueError(f"source and target differ in shape at layer {i}: {tuple(recorded[i].shape)} and {tuple(out.shape)}")
        out = out.clone()
        out[:, where] = recorded[i][:, where]
        return out

    with hooked(model, point, replace, layers):
        return model(**target)
