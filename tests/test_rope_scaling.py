"""RoPE scalings against transformers on tiny checkpoints it writes itself: every type at integer
positions and, through float position_ids and the 4-D mask, on continuous timelines; the two
length-dependent types (dynamic, longrope) on both sides of their switch, which must fall where
transformers puts it, and shift invariant (their length is measured from the timeline's start);
both config.json layouts; and errors that name a missing or wrong parameter. (GGUF files with
llama.cpp's rope_freqs and longrope tensors: test_gguf.py.)"""

import pytest
import torch

from conftest import COMMON, VOCAB, assert_close, randomize, reference_mask, reference_model
from contgpt import timeline_length
from load import config_from_hf, load

CONTEXT = 8  # the trained context the length-dependent scalings measure against
SCALINGS = {
    "linear": ("LlamaConfig", dict(rope_parameters=dict(rope_type="linear", factor=2.5, rope_theta=10000.0))),
    "dynamic": ("LlamaConfig", dict(max_position_embeddings=CONTEXT, rope_parameters=dict(rope_type="dynamic", factor=4.0, rope_theta=10000.0))),
    "yarn": (
        "LlamaConfig",
        dict(
            head_dim=32,
            max_position_embeddings=4 * CONTEXT,
            rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=CONTEXT, rope_theta=100.0),
        ),
    ),
    "longrope": (
        "Phi3Config",
        dict(
            max_position_embeddings=4 * CONTEXT,
            original_max_position_embeddings=CONTEXT,
            rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=[1.0, 1.3, 1.7, 2.2], long_factor=[1.5, 3.0, 6.0, 12.0]),
        ),
    ),
    "llama3": (
        "LlamaConfig",
        dict(
            head_dim=16,
            rope_parameters=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=100, rope_theta=10000.0
            ),
        ),
    ),
}
LENGTHS = (CONTEXT - 2, CONTEXT, CONTEXT + 1, 2 * CONTEXT)  # below, at and past the switch


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import transformers

    folder, paths = tmp_path_factory.mktemp("rope"), {}
    for kind, (config_class, extra) in SCALINGS.items():
        config = getattr(transformers, config_class)(**{**COMMON, **extra})
        model = transformers.AutoModelForCausalLM.from_config(config)
        randomize(model, seed=len(kind))
        model.save_pretrained(folder / kind)
        paths[kind] = folder / kind
    return paths


def tokens_of(T, seed=0):
    return torch.randint(0, VOCAB, (1, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", SCALINGS)
def test_integer_positions_match_transformers(checkpoints, kind):
    """Measured with the continuous test below: at most 4.5e-6 over every type, length and
    timeline (linear 4.0e-6, dynamic 3.1e-6, yarn 4.3e-6, longrope 4.3e-6, llama3 4.5e-6);
    tolerance 2e-5. Leaving out the attention factor moves yarn by 1.2 and longrope by 2.3,
    always taking the short set moves dynamic by 2.1 and longrope by 5.2."""
    ours = load(checkpoints[kind], dtype="float32")[0]
    for T in LENGTHS:
        tokens = tokens_of(T)
        theirs = reference_model(checkpoints[kind])  # fresh: transformers' dynamic scaling keeps state between calls
        with torch.no_grad():
            assert_close(ours(tokens), theirs(tokens).logits, 2e-5, f"{kind} T={T}")


@pytest.mark.parametrize("kind", SCALINGS)
def test_continuous_timelines_match_transformers(checkpoints, kind):
    """Random durations, positions their running sum minus 1, so that the timeline starts at -1
    as transformers' integer positions do (its length is max(position) + 1, ours max(t) -
    min(t - d): equal there). Rows one at a time (transformers takes one length for a batch)."""
    ours = load(checkpoints[kind], dtype="float32")[0]
    g = torch.Generator().manual_seed(1)
    for T, low, high in ((10, 0.3, 0.7), (10, 0.8, 1.9), (6, 1.0, 2.0)):  # short, long and past the switch
        durations = low + (high - low) * torch.rand(1, T, generator=g)
        positions = durations.cumsum(1) - 1
        tokens = tokens_of(T, seed=T)
        theirs = reference_model(checkpoints[kind])
        with torch.no_grad():
            expected = theirs(tokens, position_ids=positions, attention_mask=reference_mask(durations, None, kind)).logits
            got = ours(tokens, positions=positions, durations=durations)
        assert_close(got, expected, 2e-5, f"{kind} T={T} positions {low}..{high}")


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_length_dependent_scalings_switch_where_transformers_does(checkpoints, kind):
    """CONTEXT tokens use the trained frequencies, CONTEXT + 1 the scaled ones: the first
    CONTEXT logits of the longer prompt differ from those of the shorter one."""
    ours = load(checkpoints[kind], dtype="float32")[0]
    tokens = tokens_of(CONTEXT + 1)
    with torch.no_grad():
        short, long = ours(tokens[:, :CONTEXT]), ours(tokens)[:, :CONTEXT]
        below = ours(tokens[:, : CONTEXT - 1])
    assert (short - long).abs().max() > 1e-3
    assert_close(short[:, : CONTEXT - 1], below, 1e-5)  # no switch below the context


@pytest.mark.parametrize("kind", SCALINGS)
def test_every_scaling_is_shift_invariant(checkpoints, kind):
    """Measured for a shift of 100.5: 1.1e-5 (llama3) to 2.4e-5 (longrope), float32 angles
    near 100 rounding; tolerance 5e-5."""
    ours = load(checkpoints[kind], dtype="float32")[0]
    tokens = tokens_of(2 * CONTEXT)
    durations = 0.5 + torch.rand(1, 2 * CONTEXT, generator=torch.Generator().manual_seed(3))
    positions = durations.cumsum(1) - 1
    with torch.no_grad():
        shifted = ours(tokens, positions=positions + 100.5, durations=durations)
        assert_close(ours(tokens, positions=positions, durations=durations), shifted, 5e-5)


def test_timeline_length_is_the_time_it_covers():
    durations = torch.tensor([[1.0, 1.0, 1.0], [0.5, 2.0, 0.0]])
    positions = durations.cumsum(1) - 1 + torch.tensor([[0.0], [10.0]])
    assert timeline_length(positions, durations).tolist() == [3.0, 2.5]


# ----------------------------------------------------------------------------- config.json

BASE = dict(
    model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64
)


def test_both_config_layouts_give_the_same_scaling():
    yarn = dict(factor=4.0, original_max_position_embeddings=16)
    new = config_from_hf({**BASE, "rope_parameters": dict(rope_type="yarn", rope_theta=500.0, **yarn)})
    old = config_from_hf({**BASE, "rope_theta": 500.0, "rope_scaling": dict(type="yarn", **yarn)})
    assert new == old and new.rope_scaling["attention_factor"] == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)
    assert new.rope_scaling["beta_fast"] == 32 and new.rope_scaling["beta_slow"] == 1 and new.rope_theta == 500.0


def test_phi3_names_its_longrope_su():
    phi = dict(
        BASE, model_type="phi3", original_max_position_embeddings=16, rope_scaling=dict(type="su", short_factor=[1.0] * 4, long_factor=[2.0] * 4)
    )
    scaling = config_from_hf(phi).rope_scaling
    assert scaling["rope_type"] == "longrope" and scaling["attention_factor"] == pytest.approx(
        (1 + 2 * 0.6931471805599453 / 2.772588722239781) ** 0.5
    )


@pytest.mark.parametrize(
    "rope, message",
    [
        (dict(rope_type="linear"), "RoPE scaling 'linear' needs 'factor'"),
        (dict(rope_type="dynamic"), "RoPE scaling 'dynamic' needs 'factor'"),
        (
            dict(rope_type="llama3", factor=8.0, high_freq_factor=4.0, original_max_position_embeddings=16),
            "RoPE scaling 'llama3' needs 'low_freq_factor'",
        ),
        (dict(rope_type="longrope", short_factor=[1.0] * 4, original_max_position_embeddings=16), "RoPE scaling 'longrope' needs 'long_factor'"),
        (
            dict(rope_type="longrope", short_factor=[1.0] * 3, long_factor=[1.0] * 4, original_max_position_embeddings=16),
            "needs 'short_factor' of 4 numbers",
        ),
        (dict(rope_type="ntk-by-parts", factor=2.0), "unsupported RoPE scaling 'ntk-by-parts'"),
    ],
)
def test_bad_scaling_parameters_are_named(rope, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**BASE, "rope_parameters": dict(rope, rope_theta=10000.0)})


def test_yarn_without_any_context_is_named():
    config = {k: v for k, v in BASE.items() if k != "max_position_embeddings"}
    with pytest.raises(ValueError, match="RoPE scaling 'yarn' needs 'original_max_position_embeddings'"):
        config_from_hf({**config, "rope_parameters": dict(rope_type="yarn", factor=4.0, rope_theta=10000.0)})
