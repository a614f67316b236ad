"""contgpt against transformers on tiny random checkpoints that transformers itself wrote."""

import pytest
import torch

from conftest import TINY, VOCAB, assert_close, random_timeline, reference_mask, reference_model, write_tiny
from load import load

# Measured (float32, logits up to about 15; 2026-12-02, and on the machine before): exactly 0.0
# for the ordinary and the continuous forward of every family at these shapes; embeds 2.5e-6
# (Gemma 2) to 7.6e-6 (Gemma), up to 1.1e-5 before; the sharded checkpoint 2.5e-6, where a batch
# of another shape makes the CPU's matmul kernels round differently. Tolerance 5e-5, 4.5x the
# largest: a bit-for-bit match is this machine's luck, not a promise (another CPU's kernels
# block the sums otherwise).
TOL = 5e-5


@pytest.mark.parametrize("name", list(TINY))
def test_ordinary_forward_matches_transformers(tiny_dir, name):
    path = tiny_dir(name)
    model, tokenizer = load(path, dtype="float32")
    assert tokenizer is None  # random checkpoints come without tokenizer files
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), reference_model(path)(tokens).logits
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape == (2, 12, VOCAB)
    assert_close(ours, theirs, TOL)


@pytest.mark.parametrize("name", list(TINY))
def test_continuous_timeline_matches_transformers(tiny_dir, name):
    """Random positions and durations per batch row against transformers given the same float
    position_ids and the 4-D additive mask of log-durations (eager attention)."""
    path = tiny_dir(name)
    model, _ = load(path, dtype="float32")
    tokens = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(2))
    positions, durations = random_timeline(3, 12, seed=3)
    mask = reference_mask(durations, model.config.sliding_window, name)
    with torch.no_grad():
        ours = model(tokens, positions=positions, durations=durations)
        theirs = reference_model(path)(tokens, position_ids=positions, attention_mask=mask).logits
        ordinary = model(tokens)
    assert_close(ours, theirs, TOL)
    assert (ours - ordinary).abs().max().item() > 0.1  # the timeline really changed something


@pytest.mark.parametrize("name", ["gemma", "gemma2", "llama3"])
def test_embeds_are_raw_rows_scaled_inside(tiny_dir, name):
    """embeds= takes raw table rows and the model applies the family's scaling; transformers 5
    scales inside its embedding module, so it is given already-scaled rows."""
    path = tiny_dir(name)
    model, _ = load(path, dtype="float32")
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    raw = model.embed(tokens)
    scale = model.config.dim**0.5 if model.config.quirks.embed_scale else 1.0
    with torch.no_grad():
        ours = model(embeds=raw)
        theirs = reference_model(path)(inputs_embeds=raw * scale).logits
    assert_close(ours, theirs, TOL)
    assert torch.equal(ours, model(tokens))


def test_qwen2_window_from_max_window_layers(tmp_path):
    """Qwen2 with use_sliding_window: the layers from max_window_layers on slide. Read from
    transformers 5's layer_types and, with them removed (a transformers 4 config.json), from
    max_window_layers itself."""
    import json

    import transformers

    from conftest import COMMON, randomize

    config = transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    reference = transformers.AutoModelForCausalLM.from_config(config)
    randomize(reference, seed=11)
    path = tmp_path / "qwen2_window"
    reference.save_pretrained(path)
    assert reference.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    positions, durations = random_timeline(2, 12, seed=2)
    mask = reference_mask(durations, 4, "qwen2")
    with torch.no_grad():
        theirs = reference_model(path)(tokens, position_ids=positions, attention_mask=mask).logits
    model, _ = load(path, dtype="float32")
    assert model.config.sliding_layers == (False, True, True)
    assert_close(model(tokens, positions=positions, durations=durations), theirs, TOL)
    hf = json.loads((path / "config.json").read_text())
    hf.pop("layer_types")
    (path / "config.json").write_text(json.dumps(hf))
    older, _ = load(path, dtype="float32")
    assert older.config.sliding_layers == (False, True, True)
    assert torch.equal(older(tokens, positions=positions, durations=durations), model(tokens, positions=positions, durations=durations))


def test_sharded_checkpoint(tmp_path):
    path = write_tiny("llama3", tmp_path, max_shard_size="20KB")
    shards = list(path.glob("model-*.safetensors"))
    assert (path / "model.safetensors.index.json").exists() and len(shards) > 1
    model, _ = load(path, dtype="float32")
    tokens = torch.arange(10)[None] % VOCAB
    with torch.no_grad():
        assert_close(model(tokens), reference_model(path)(tokens).logits, TOL)


def test_tied_checkpoint_shares_one_matrix(tiny_dir):
    """Parity of the tied model is in the tests above; here: one matrix, not two."""
    model, _ = load(tiny_dir("llama_tied"), dtype="float32")
    assert model.lm_head is None and "lm_head.weight" not in model.state_dict()
    tokens = torch.arange(6)[None]
    before = model(tokens)[0, -1, 7]
    model.model.embed_tokens.weight[7] *= 2  # token 7 is not in the input: only the head sees it
    assert model(tokens)[0, -1, 7] == pytest.approx(2 * before.item(), rel=1e-5)
