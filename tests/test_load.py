"""Loading Hugging Face checkpoint directories: memory-mapped weights and clear errors."""

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import write_tiny
from load import load


@pytest.fixture
def ckpt(tiny_dir, tmp_path):
    """A private copy of a tiny checkpoint that a test may break."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dir("qwen2"), path)
    return path


def mapped_files(tensor: torch.Tensor) -> set[str]:
    """Files whose memory mapping holds this tensor's data (Linux /proc/self/maps)."""
    address, found = tensor.data_ptr(), set()
    for line in open("/proc/self/maps"):
        parts = line.split()
        start, end = (int(a, 16) for a in parts[0].split("-"))
        if start <= address < end and len(parts) >= 6:
            found.add(parts[5])
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_weights_are_memory_mapped_not_copied(ckpt):
    model, _ = load(ckpt, dtype="float32")
    for name in ("model.embed_tokens.weight", "model.layers.2.mlp.down_proj.weight", "lm_head.weight"):
        tensor = model.get_parameter(name)
        assert str(ckpt / "model.safetensors") in mapped_files(tensor), name


def test_other_dtype_converts(ckpt):
    model, _ = load(ckpt, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.tensor([1, 2, 3])).dtype == torch.float32


def test_missing_directory_and_config(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load(tmp_path / "nowhere")
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        load(ckpt)


def test_missing_weights_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        load(ckpt)


@pytest.mark.parametrize("keep", [4, 100, 5000])
def test_a_truncated_safetensors_file_names_the_file_and_the_fix(ckpt, keep):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:keep])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file .* save or download"):
        load(ckpt)


def test_missing_shard(tmp_path):
    path = write_tiny("llama3", tmp_path, max_shard_size="20KB")
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"shard {shard.name} named in model.safetensors.index.json is missing"):
        load(path)


def rewrite(ckpt, change):
    state = load_file(ckpt / "model.safetensors")
    change(state)
    save_file(state, ckpt / "model.safetensors")


def test_missing_tensor_is_named(ckpt):
    rewrite(ckpt, lambda s: s.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match="missing tensor model.layers.1.self_attn.k_proj.bias"):
        load(ckpt)


def test_unexpected_tensor_is_named(ckpt):
    rewrite(ckpt, lambda s: s.update({"model.layers.0.mystery.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match="unexpected tensor model.layers.0.mystery.weight for a qwen2 model"):
        load(ckpt)


def test_shape_mismatch_names_both_shapes(ckpt):
    rewrite(ckpt, lambda s: s.update({"model.norm.weight": torch.ones(31)}))
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(31,\), the config asks for \(32,\)"):
        load(ckpt)


def edit_config(ckpt, **changes):
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))


def test_unsupported_architecture_lists_the_supported(ckpt):
    edit_config(ckpt, model_type="gpt2")
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'; supported model_type: llama, mistral, qwen2"):
        load(ckpt)


def test_unsupported_rope_scaling_lists_the_supported(ckpt):
    edit_config(ckpt, rope_parameters={"rope_type": "mrope", "factor": 4.0, "rope_theta": 1e6})
    with pytest.raises(ValueError, match="unsupported RoPE scaling 'mrope'; supported: default, linear, dynamic, yarn, longrope, llama3"):
        load(ckpt)


def test_transformers_4_config_layout(ckpt, tiny_dir):
    """Older configs carry rope_theta / rope_scaling instead of rope_parameters."""
    ref, _ = load(tiny_dir("qwen2"), dtype="float32")
    config = json.loads((ckpt / "config.json").read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    config.pop("layer_types")
    (ckpt / "config.json").write_text(json.dumps({**config, "rope_theta": theta, "rope_scaling": None}))
    model, _ = load(ckpt, dtype="float32")
    tokens = torch.tensor([3, 1, 4, 1, 5])
    assert torch.equal(model(tokens), ref(tokens))
