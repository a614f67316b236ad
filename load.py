"""Load checkpoints into contgpt: `model, tokenizer = load(source)`.

A source is a Hugging Face checkpoint directory (config.json plus model.safetensors or a sharded
model.safetensors.index.json). The model is built on the meta device and the memory-mapped
tensors are assigned into it, so weights stored in the requested dtype are never copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from contgpt import Config, Transformer
from tokenizer import Tokenizer


def load(source: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    """(model, tokenizer) from a checkpoint directory; tokenizer is None if it has no tokenizer file.

    dtype defaults to float32 on the CPU (16-bit matmuls are hundreds of times slower on CPUs
    without bf16 instructions) and bfloat16 on a GPU.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_dir():
        raise ValueError(f"{path} is not a checkpoint directory (config.json + *.safetensors)")
    device = torch.device(device or "cpu")
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    return load_hf_dir(path, dtype, device), Tokenizer.from_dir(path)


def load_hf_dir(path: Path, dtype: torch.dtype, device: torch.device) -> Transformer:
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no config.json in {path}")
    config = Config.from_hf(json.loads(config_file.read_text()))
    with torch.device("meta"):
        model = Transformer(config)
    state = read_safetensors(path)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # some tied checkpoints store the shared matrix twice
    assign_weights(model, state, dtype, device, where=path)
    return model


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
        with safe_open(path / shard, framework="pt") as f:  # tensors are views of an mmap
            state.update((name, f.get_tensor(name)) for name in f.keys())
    return state


def assign_weights(model: Transformer, state: dict[str, torch.Tensor], dtype, device, where) -> None:
    """Put `state` into a meta-device model, checking names and shapes first. Tensors already
    in the right dtype and device are assigned as they are (no copy)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ValueError(f"{where}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise ValueError(f"{where}: unexpected tensor {unexpected[0]} for a {model.config.family} model")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{where}: tensor {name} has shape {tuple(tensor.shape)}, the config asks for {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    model.eval().requires_grad_(False)
