"""int8 weight-only quantization: per-output-channel int8 weights and the layers that use them.

load(source, dtype="int8") stores every linear layer's weight (and a tied embedding table) as
int8 with one scale per output row, quantized row by row as the checkpoint is read
(`int8_layout`, then `quantize_int8`); which activation dtype goes with them is precision.py's
choice. Decoding one token reads every weight once, so a quarter of float32's bytes is what
makes it faster; the batched sweeps are bound by arithmetic instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q (out, in) int8, scales (out,)) with weight ~ q * scales[:, None].
    The scales are rounded to their dtype first and q computed from the rounded ones, so the
    only error left is q's own rounding (at most half a step per weight)."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).to(scale_dtype)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).float()  # an all-zero row stays zero
    q = (w / safe[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and one scale per output channel (weight-only
    quantization, as gpt-fast does it): y = (x @ q.T) * scales + bias, through torch's packed
    int8 kernel. Decoding reads a quarter of the float32 bytes, and it is bound by reading."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", q)  # (out, in) int8
        self.register_buffer("scales", scales)  # (out,) in the activation dtype
        self.register_buffer("bias", bias)

    @classmethod
    def like(cls, linear: nn.Linear, scale_dtype: torch.dtype) -> Int8Linear:
        """An empty layer of the same shape on the meta device, for load_state_dict(assign=True)."""
        out, inp = linear.weight.shape
        meta = lambda *shape, dtype: torch.empty(*shape, dtype=dtype, device="meta")
        return cls(meta(out, inp, dtype=torch.int8), meta(out, dtype=scale_dtype), None if linear.bias is None else meta(out, dtype=scale_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], -1)


class Int8Embedding(nn.Module):
    """An embedding table kept as int8 rows with per-row scales: a tied model's output head and
    input embedding share one int8 matrix. Looked-up rows come back in the activation dtype."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(self.scales.dtype) * self.scales[ids, None]

    def as_head(self) -> Int8Linear:
        return Int8Linear(self.weight, self.scales)


def int8_layout(model: nn.Module, scale_dtype: torch.dtype, tied: bool) -> set[str]:
    """Swap every nn.Linear of a meta-device model (and a tied embedding table) for its int8
    form. Returns the names of the weights to quantize (the checkpoint's names, unchanged)."""
    names = set()
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, Int8Linear.like(child, scale_dtype))
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            names.add(f"{name}.weight")
    if tied:
        table = model.model.embed_tokens
        rows, dim = table.weight.shape
        model.model.embed_tokens = Int8Embedding(
            torch.empty(rows, dim, dtype=torch.int8, device="meta"), torch.empty(rows, dtype=scale_dtype, device="meta")
        )
        names.add("model.embed_tokens.weight")
    return names
