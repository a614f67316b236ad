"""lens.py on tiny checkpoints: the residual stream's hook points, the logit lens (its last layer
is the model's answer) and activation patching (patching every layer from A into B gives A,
patching none gives B), and hooks that never outlive a call."""

import pytest
import torch

from conftest import VOCAB, assert_close, for_dtype, random_timeline
from lens import logit_lens, patch, residuals
from load import load

T = 10


@pytest.fixture(scope="module", params=["qwen2", "gemma2"])  # plain, and soft-capped logits with sandwich norms
def model(request, tiny_dir, dtype):
    return load(tiny_dir(request.param), dtype=dtype)[0]


@pytest.fixture(scope="module")
def runs():
    """Two runs over the same tokens on different timelines, as the apples at c = 0.5 and 1."""
    tokens = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))
    positions, durations = random_timeline(2, T, seed=1)
    return dict(tokens=tokens, positions=positions, durations=durations), dict(tokens=tokens)


def no_hooks_left(model):
    return all(not m._forward_hooks for m in model.modules())


def test_the_stream_flows_from_block_to_block(model, runs):
    a, _ = runs
    entering, leaving = residuals(model, point="resid_in", **a), residuals(model, **a)
    L = model.config.n_layers
    assert leaving.shape == (L, 2, T, model.config.dim)
    assert torch.equal(entering[1:], leaving[:-1]) and no_hooks_left(model)


def test_the_logit_lens_at_the_last_layer_is_the_model_s_answer(model, runs):
    """Measured: 1.4e-6 at most on the machine before, exactly 0 on this one (2026-12-02): the same
    operations on the same vectors, but the head's matmul runs over another batch shape, so its
    float32 sums may be blocked differently; tolerance 1e-5."""
    a, _ = runs
    lens = logit_lens(model, **a)
    assert lens.shape == (model.config.n_layers, 2, VOCAB) and lens.dtype == torch.float32
    answer = model(**a)[:, -1]
    assert_close(lens[-1], answer, for_dtype(model.dtype, 1e-5, answer))
    assert (lens[0] - lens[-1]).abs().max() > 0.1  # earlier layers answer otherwise
    answer = model(**a)[:, 3]
    assert_close(logit_lens(model, position=3, **a)[-1], answer, for_dtype(model.dtype, 1e-5, answer))


def test_patching_every_layer_from_a_into_b_gives_a(model, runs):
    a, b = runs
    every = range(model.config.n_layers)
    assert torch.equal(patch(model, a, b, every), model(**a))
    assert torch.equal(patch(model, a, b, []), model(**b))
    assert (patch(model, a, b, [0]) - model(**b)).abs().max() > 1e-3  # one layer changes something
    assert no_hooks_left(model)


def test_patching_some_positions_leaves_the_earlier_ones(model, runs):
    """Causal: patching positions 6.. of every layer cannot change the logits before 6."""
    a, b = runs
    patched = patch(model, a, b, range(model.config.n_layers), positions=range(6, T))
    assert torch.equal(patched[:, :6], model(**b)[:, :6]) and torch.equal(patched[:, 6:], model(**a)[:, 6:])


def test_bad_patches_are_named_and_leave_no_hook(model, runs):
    a, b = runs
    with pytest.raises(ValueError, match="source and target differ in shape"):
        patch(model, a, dict(tokens=b["tokens"][:, :5]), [0])
    with pytest.raises(ValueError, match="layer 99 is not a layer of this model"):
        patch(model, a, b, [99])
    with pytest.raises(ValueError, match="point must be resid_in or resid_out"):
        residuals(model, point="mlp", **a)
    assert no_hooks_left(model)
