"""On a CUDA GPU, when there is one (CI has none: these skip there): "auto" and "int8" resolved
from the device, float32 on the GPU against transformers on the CPU, bf16 close to float32,
the sweep engine and the cache on the GPU, each rank on its own GPU."""

import warnings

import pytest
import torch

import precision
from conftest import TINY, VOCAB, random_timeline, reference_mask, reference_model
from load import load
from sweep import last_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
GPU = torch.device("cuda")


def test_auto_asks_the_device():
    chosen = precision.resolve("auto", GPU)
    assert chosen.compute == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    assert torch.cuda.get_device_name(GPU) in chosen.reason


def test_int8_runs_or_falls_back_with_a_message(tiny_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = precision.resolve("int8", GPU)
    if chosen.int8:
        reference, model = load(tiny_dir("qwen2"), dtype="float32", device=GPU)[0], load(tiny_dir("qwen2"), dtype="int8", device=GPU)[0]
        tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0)).to(GPU)
        ours, theirs = model(tokens), reference(tokens)
        assert (ours - theirs).abs().max() <= 0.05 * (theirs.max() - theirs.min())
    else:
        assert any("int8 weights are not available here" in str(w.message) for w in caught)
        assert chosen.compute == torch.bfloat16 and "int8 requested, but" in chosen.reason


@pytest.mark.parametrize("name", list(TINY))
def test_float32_on_the_gpu_matches_transformers_on_the_cpu(tiny_dir, name):
    """Measured on an H100 (torch 2.11): up to 3.2e-5 (llama_tied; float32 matmuls, no TF32);
    tolerance 1e-4."""
    path = tiny_dir(name)
    model, _ = load(path, dtype="float32", device=GPU)
    assert model.device.type == "cuda" and all(p.device.type == "cuda" for p in model.parameters())
    tokens = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(2))
    positions, durations = random_timeline(3, 12, seed=3)
    mask = reference_mask(durations, model.config.sliding_window, name)
    with torch.no_grad():
        theirs = reference_model(path)(tokens, position_ids=positions, attention_mask=mask).logits
        ours = model(tokens.to(GPU), positions=positions.to(GPU), durations=durations.to(GPU)).cpu()
    assert (ours - theirs).abs().max() <= 1e-4


def test_bf16_on_the_gpu_is_close_to_float32(tiny_dir):
    path = tiny_dir("qwen2")
    reference, model = load(path, dtype="float32", device=GPU)[0], load(path, dtype="auto", device=GPU)[0]
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4)).to(GPU)
    ours, theirs = model(tokens), reference(tokens)
    assert ours.dtype == torch.float32 and (ours - theirs).abs().max() <= 0.05 * (theirs.max() - theirs.min())


def test_sweep_on_the_gpu_equals_the_cpu(tiny_dir):
    import experiments as ex

    path = tiny_dir("gemma2")
    gpu, cpu = load(path, dtype="float32", device=GPU)[0], load(path, dtype="float32")[0]
    tokens = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(5))
    positions, durations = ex.shrink(12, [5, 6, 7], torch.linspace(0.1, 1.0, 33))
    on_gpu = last_logits(gpu, tokens, positions=positions, durations=durations)
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu() - last_logits(cpu, tokens, positions=positions, durations=durations)).abs().max() <= 1e-4


def test_each_rank_takes_its_own_gpu():
    from parallel import World

    assert World(rank=0, size=2, local_rank=0, local_size=2).device("auto") == torch.device("cuda:0")
    assert World().device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit, match="this node has only"):
        World(rank=9, size=10, local_rank=torch.cuda.device_count(), local_size=10).device("auto")
