"""Precision: "auto" decided from the hardware (detection forced both ways), explicit dtypes
honoured, int8 weights close to float32, memory maps kept, and bf16 on the real default model."""

import json
import math
import sys
import warnings

import pytest
import torch

import precision
from conftest import VOCAB, fetch_or_skip, write_tiny
from int8 import Int8Embedding, Int8Linear, quantize_int8
from load import load


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    """A cache of the test's own (no kept decision yet), and no CONTGPT_CPU_BF16."""
    monkeypatch.setenv("CONTGPT_CACHE", str(tmp_path))
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    precision.cpu_bf16.cache_clear()
    yield tmp_path
    precision.cpu_bf16.cache_clear()


@pytest.fixture
def detection(monkeypatch, own_cache):
    """Force what the CPU reports: detection(flags, measured bf16 speed-up over float32)."""

    def force(flags, speedup, int8_speedup=1.0):
        """int8_speedup: what the int8 kernel measures with bf16 activations over float32."""
        precision.cpu_bf16.cache_clear()
        (own_cache / "precision.json").unlink(missing_ok=True)  # each forced CPU measures afresh
        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
        monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: speedup)
        monkeypatch.setattr(precision, "measured_int8_bf16_speedup", lambda: int8_speedup)

    yield force
    precision.cpu_bf16.cache_clear()


CPU = torch.device("cpu")


def test_auto_picks_bfloat16_on_a_cpu_with_native_bf16(detection):
    detection({"avx2", "avx512f", "avx512_bf16"}, 2.3)
    chosen = precision.resolve("auto", CPU)
    assert chosen.compute == torch.bfloat16 and chosen.name == "bfloat16"
    assert "avx512_bf16" in chosen.reason and "2.3x" in chosen.reason


def test_auto_picks_float32_without_bf16_instructions(detection):
    detection({"avx2", "avx512f"}, 500.0)  # the flags decide; no probe is trusted against them
    chosen = precision.resolve("auto", CPU)
    assert chosen.compute == torch.float32 and "no bf16 instructions" in chosen.reason


def test_auto_picks_float32_when_bf16_measures_slow(detection):
    detection({"amx_bf16"}, 0.9)
    chosen = precision.resolve("auto", CPU)
    assert chosen.compute == torch.float32 and "0.9x" in chosen.reason


def test_auto_measures_when_the_cpu_has_no_flag_list(detection):
    detection(None, 3.0)
    assert precision.resolve("auto", CPU).compute == torch.bfloat16
    detection(None, 1.0)
    assert precision.resolve("auto", CPU).compute == torch.float32


def test_the_decision_is_kept_per_machine_and_measured_again_on_request(detection, monkeypatch, own_cache):
    """One measurement per machine and torch version: a later run (a fresh process: cache_clear)
    that would measure 1.0 at a busy moment keeps bfloat16; --remeasure replaces it."""
    detection({"avx512_bf16"}, 2.1)
    assert precision.resolve("auto", CPU).compute == torch.bfloat16
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: 1.0)
    precision.cpu_bf16.cache_clear()
    chosen = precision.resolve("auto", CPU)
    assert chosen.compute == torch.bfloat16 and "2.1x" in chosen.reason
    kept = json.loads((own_cache / "precision.json").read_text())
    assert list(kept) == [precision.machine_key()] and kept[precision.machine_key()]["fast"] is True
    fast, why = precision.remeasure()
    assert not fast and "1.0x" in why and precision.resolve("auto", CPU).compute == torch.float32
    monkeypatch.setattr(precision, "machine_key", lambda: "another CPU | avx512_bf16 | torch 9")
    precision.cpu_bf16.cache_clear()
    assert not precision.cpu_bf16()[0] and len(json.loads((own_cache / "precision.json").read_text())) == 2


def test_an_unreadable_decisions_file_is_measured_again(detection, own_cache):
    (own_cache / "precision.json").write_text("not json")
    detection({"avx512_bf16"}, 2.5)
    (own_cache / "precision.json").write_text("[1, 2]")
    assert precision.cpu_bf16()[0]
    assert json.loads((own_cache / "precision.json").read_text())[precision.machine_key()]["speedup"] == 2.5
    (own_cache / "precision.json").write_text(json.dumps({precision.machine_key(): {"fast": True}}))  # an entry cut short
    precision.cpu_bf16.cache_clear()
    assert precision.cpu_bf16()[0] and "2.5x" in precision.cpu_bf16()[1]


@pytest.mark.parametrize("value, dtype", [("1", torch.bfloat16), ("0", torch.float32)])
def test_the_environment_can_say_what_auto_is(detection, monkeypatch, value, dtype):
    """CONTGPT_CPU_BF16 decides without a probe, against the flags: how the tests make "auto"
    resolve as it would on a CPU of the other kind (docs/tests.md)."""
    detection({"avx2"} if value == "1" else {"avx512_bf16"}, 3.0 if value == "0" else 0.01, int8_speedup=0.5)
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: pytest.fail("the probe ran"))
    monkeypatch.setenv(precision.FORCE_ENV, value)
    chosen = precision.resolve("auto", CPU)
    assert chosen.compute == dtype and f"CONTGPT_CPU_BF16={value}" in chosen.reason
    if value == "1":
        assert precision.resolve("int8", CPU).compute == torch.bfloat16
    precision.cpu_bf16.cache_clear()
    monkeypatch.setenv(precision.FORCE_ENV, "yes")
    with pytest.raises(ValueError, match="CONTGPT_CPU_BF16 must be 1 .* or 0 .*, not 'yes'"):
        precision.resolve("auto", CPU)


def test_auto_under_the_switch_loads_and_runs_a_bfloat16_model(tiny_dir, monkeypatch, own_cache):
    """What a bf16 CPU's user gets from load(dtype="auto"), on any CPU."""
    monkeypatch.setenv(precision.FORCE_ENV, "1")
    model = load(tiny_dir("qwen2"), dtype="auto")[0]
    assert model.dtype == torch.bfloat16 and "CONTGPT_CPU_BF16=1" in model.precision.reason
    logits = model(torch.tensor([1, 2, 3]), durations=torch.tensor([1.0, 0.5, 2.0]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_the_command_says_what_auto_picks(own_cache, monkeypatch, capsys):
    monkeypatch.setenv(precision.FORCE_ENV, "1")
    precision.main([])
    out = capsys.readouterr().out
    assert out.startswith("auto on the CPU: bfloat16 (CONTGPT_CPU_BF16=1 in the environment)") and str(own_cache) in out


def test_the_real_probe_agrees_with_the_real_flags(monkeypatch, own_cache):
    """On this machine, whatever it is: without bf16 flags nothing is measured and the answer is
    float32; with them, the probe measures once, its reason names the flags and the figure, the
    decision follows the figure, and a second measurement here agrees with the decision."""
    precision.cpu_bf16.cache_clear()
    figures = []
    measure = precision.measured_bf16_speedup
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: figures.append(measure()) or figures[-1])
    fast, why = precision.cpu_bf16()
    precision.cpu_bf16.cache_clear()
    flags = precision.cpu_flags()
    native = sorted(flags & precision.BF16_FLAGS) if flags is not None else []
    if flags is not None and not native:  # this machine, 2026-12-02: AVX2, no bf16
        assert not fast and figures == [] and "no bf16 instructions" in why
        return
    assert len(figures) == 1 and f"{figures[0]:.1f}x" in why and all(flag in why for flag in native)
    assert fast == (figures[0] >= precision.MIN_BF16_SPEEDUP)
    again = measure(n=512)  # another size: a decision from one lucky run would not hold here
    assert again > 1.0 if fast else again < 2 * precision.MIN_BF16_SPEEDUP, (figures, again)


def test_int8_activations_follow_the_hardware(detection):
    detection({"avx512_bf16"}, 2.0, int8_speedup=0.5)  # native bf16: no probe of the int8 kernel is needed
    assert precision.resolve("int8", CPU).compute == torch.bfloat16
    detection({"avx2"}, 2.0, int8_speedup=1.0)
    with pytest.warns(UserWarning, match="generic kernel"):
        chosen = precision.resolve("int8", CPU)
    assert chosen.int8 and chosen.compute == torch.float32


def test_int8_takes_bf16_activations_where_its_kernel_measures_them_faster(detection):
    """No native bf16, but torch's int8 kernel runs its bf16 path fast (as on AVX2 CPUs)."""
    detection({"avx2"}, 0.01, int8_speedup=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about a slow kernel
        chosen = precision.resolve("int8", CPU)
    assert chosen.int8 and chosen.compute == torch.bfloat16
    assert "no bf16 instructions" in chosen.reason and "10.0x faster with bf16 activations" in chosen.reason
    assert precision.resolve("auto", CPU).compute == torch.float32  # the rest of the model stays float32


def test_the_real_int8_probe_decides_the_real_activations():
    precision.cpu_bf16.cache_clear()
    speedup = precision.measured_int8_bf16_speedup()
    assert math.isfinite(speedup) and speedup > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = precision.resolve("int8", CPU)
    fast = precision.cpu_bf16()[0]
    expected = torch.bfloat16 if fast or speedup >= precision.MIN_BF16_SPEEDUP else torch.float32
    assert chosen.compute == expected, chosen


def test_int8_falls_back_with_a_message_where_the_kernel_is_missing(detection, monkeypatch):
    detection({"avx512_bf16"}, 2.0)
    monkeypatch.setattr(precision, "int8_kernel_problem", lambda device, dtype: "no int8 weight kernel for cuda")
    with pytest.warns(UserWarning, match="int8 weights are not available here .*running in bfloat16"):
        chosen = precision.resolve("int8", CPU)
    assert not chosen.int8 and chosen.compute == torch.bfloat16


@pytest.mark.parametrize("bad", ["fp8", "float", 16, torch.int8, None])
def test_unknown_dtypes_are_named(bad):
    with pytest.raises(ValueError, match="dtype"):
        precision.resolve(bad, CPU)


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16), (torch.float64, torch.float64)])
def test_explicit_dtypes_are_honoured(tiny_dir, dtype, expected):
    model, _ = load(tiny_dir("qwen2"), dtype=dtype)
    assert model.dtype == expected and all(p.dtype == expected for p in model.parameters())
    assert model.precision.reason == "requested"
    assert model(torch.tensor([1, 2, 3])).dtype == torch.float32


def test_load_names_a_bad_dtype(tiny_dir):
    with pytest.raises(ValueError, match="unknown dtype 'half'; choose one of auto, float32, bfloat16, int8"):
        load(tiny_dir("qwen2"), dtype="half")


# ----------------------------------------------------------------------------- int8


def test_quantize_int8_rounds_each_weight_to_half_a_step():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scales
    w[5] = 0.0  # an all-zero row stays zero, with no NaN
    q, scales = quantize_int8(w, torch.float32)
    assert q.dtype == torch.int8 and scales.shape == (64,) and q.abs().max() <= 127
    error = (q.float() * scales[:, None] - w).abs()
    # half a step, plus the float32 rounding of q * scale itself (a weight right at a half step;
    # an absolute 1e-12 failed on 7 of 300 random draws, rows of scale 10 round at about 1e-6)
    assert (error <= scales[:, None] / 2 + w.abs() * 2**-23).all()
    assert torch.equal(q[5], torch.zeros(96, dtype=torch.int8)) and scales[5] == 0


def test_quantize_int8_gives_each_row_its_own_scale():
    """The bound above holds for any scale, one per tensor included: here each row's scale must
    be its own largest magnitude over 127, so every non-zero row uses the full int8 range, and a
    small row's error stays far below what one scale for the whole tensor would leave it."""
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)) * torch.logspace(-3, 1, 16)[:, None]
    q, scales = quantize_int8(w, torch.float32)
    torch.testing.assert_close(scales, w.abs().amax(1) / 127, rtol=2**-23, atol=0)
    assert (q.abs().amax(1) == 127).all()
    small = (q[0].float() * scales[0] - w[0]).abs().max()
    assert small <= w[0].abs().max() / 254 * (1 + 2**-20) < w.abs().max() / 254 / 100  # a per-tensor step is 10,000x larger


def int8_model(path, monkeypatch, activations="float32"):
    """int8 with float32 activations (the kernel's portable path) or bf16 ones, whatever this CPU has."""
    precision.cpu_bf16.cache_clear()
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (False, "forced"))
    monkeypatch.setattr(precision, "measured_int8_bf16_speedup", lambda: 1.0 if activations == "float32" else 10.0)
    if activations == "float32":
        with pytest.warns(UserWarning, match="generic kernel"):
            return load(path, dtype="int8")[0]
    model = load(path, dtype="int8")[0]
    assert model.dtype == getattr(torch, activations)
    return model


@pytest.mark.parametrize("activations", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["qwen2", "llama_tied", "phi3"])
def test_int8_logits_are_close_to_float32(tiny_dir, monkeypatch, name, activations):
    """Every linear layer int8, per output channel. Measured on these random models: largest
    logit difference 1.9% (qwen2), 2.8% (llama_tied), 2.1% (phi3) of the logits' spread
    (max - min) with float32 activations, 1.9%, 3.5% and 2.4% with bf16 ones; tolerance 5%."""
    path = tiny_dir(name)
    reference, model = load(path, dtype="float32")[0], int8_model(path, monkeypatch, activations)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears and any(isinstance(m, Int8Linear) for m in model.modules())
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    ours, theirs = model(tokens), reference(tokens)
    assert ours.dtype == torch.float32
    spread = theirs.max() - theirs.min()
    assert (ours - theirs).abs().max() <= 0.05 * spread
    assert (ours - theirs).abs().max() > 0  # it really is another model


def test_int8_tied_model_shares_one_int8_table(tiny_dir, monkeypatch):
    model = int8_model(tiny_dir("llama_tied"), monkeypatch)
    table, head = model.model.embed_tokens, model.lm_head
    assert isinstance(table, Int8Embedding) and isinstance(head, Int8Linear)
    assert head.weight.data_ptr() == table.weight.data_ptr() and table.weight.dtype == torch.int8


@pytest.mark.parametrize("activations", ["float32", "bfloat16"])
def test_int8_embeds_still_interpolate(tiny_dir, monkeypatch, activations):
    """model.embed gives rows in the activation dtype, and embeds= of them equals tokens=."""
    model = int8_model(tiny_dir("llama_tied"), monkeypatch, activations)
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    assert torch.equal(model(embeds=model.embed(tokens)), model(tokens))


# ----------------------------------------------------------------------------- memory maps


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_checkpoint_in_the_models_dtype_stays_memory_mapped(tmp_path, detection):
    """A bf16 checkpoint loaded by "auto" on bf16 hardware: every weight a view of the file."""
    from test_load import mapped_files

    detection({"avx512_bf16"}, 2.0)
    path = write_tiny("qwen2", tmp_path)
    from safetensors.torch import load_file, save_file

    state = {k: v.to(torch.bfloat16) for k, v in load_file(path / "model.safetensors").items()}
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    model, _ = load(path)
    assert model.dtype == torch.bfloat16
    for name, tensor in model.state_dict().items():
        assert str(path / "model.safetensors") in mapped_files(tensor), name


# ----------------------------------------------------------------------------- the real default model


@pytest.fixture(scope="module")
def qwen():
    from load import fetch_model

    fetch_or_skip(lambda: fetch_model("qwen2.5-0.5b"))
    return load("qwen2.5-0.5b", dtype="float32")


PROMPTS = ["The capital of France is", "def fibonacci(n):\n    "]


@pytest.mark.slow  # the real default model
def test_int8_on_the_default_model_is_close_to_float32(qwen):
    """Measured: largest probability difference 0.028 over every position of three prompts,
    largest logit difference 0.63; tolerances 0.06 and 1.3."""
    reference, tokenizer = qwen
    model, _ = load("qwen2.5-0.5b", dtype="int8")
    for prompt in PROMPTS:
        ids = torch.tensor(tokenizer.encode(prompt))
        ours, theirs = model(ids)[0], reference(ids)[0]
        assert (ours - theirs).abs().max() <= 1.3
        assert (ours.softmax(-1) - theirs.softmax(-1)).abs().max() <= 0.06


@pytest.mark.slow  # the real default model
def test_bf16_apples_top_answers_equal_float32(qwen):
    """The apples sweep at 20 points in bfloat16 and in float32: the same top digit at >= 95%
    of them (measured 100% at these 20, 97% at 100 points)."""
    import experiments as ex

    if not precision.cpu_bf16()[0]:
        pytest.skip(f"bf16 is not native here ({precision.cpu_bf16()[1]}): it would be emulated, too slowly for a test")
    reference, tokenizer = qwen
    model, _ = load("qwen2.5-0.5b", dtype="bfloat16")
    prompt = 'Question: In the sentence "apple apple apple apple", how many times is a fruit mentioned? Reply with a single-digit number\nAnswer: '
    at = prompt.index("apple")
    ids, span = ex.span_of(tokenizer, prompt, [(at + a, at + b) for a, b in ex.word_ranges(prompt[at : at + 23], "apple")])
    tops = [ex.digit_sweep(m, tokenizer, ids, span, 20, {}).top() for m in (model, reference)]
    same = sum(a == b for a, b in zip(*tops))
    assert same >= 19, tops
    assert {"1", "2", "3", "4"} <= set(tops[0])


def test_the_hardware_probes_leave_the_random_state_alone():
    precision.cpu_bf16.cache_clear()
    precision.measured_int8_bf16_speedup.cache_clear()
    state = torch.get_rng_state()
    precision.measured_bf16_speedup(n=32, repeats=1)
    precision.measured_int8_bf16_speedup()
    assert torch.equal(torch.get_rng_state(), state)
