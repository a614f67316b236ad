"""Which device and dtype a model runs in, chosen from the hardware by measuring it.

    load(source)                    # dtype="auto": bfloat16 where the hardware multiplies it natively
    load(source, dtype="float32")   # the exact path the parity tests check
    load(source, dtype="int8")      # int8 weights per output channel, bf16 activations where fast

"auto" never assumes: on a CPU bf16 is fast only with native instructions (avx512_bf16, AMX;
bf16 on Arm), and without them a bf16 matmul runs hundreds of times slower than float32. So
"auto" reads the CPU's flags and then measures a few milliseconds of matmuls in both dtypes;
bfloat16 is chosen only when it is measured faster. The two dtypes give different numbers, so
the decision is made once per machine and torch version and kept in the cache
(precision.json): a busy moment cannot flip it between runs. `python precision.py` shows it,
`python precision.py --remeasure` measures again. CONTGPT_CPU_BF16=1 (or 0) skips the probe
and takes the CPU as one with (or without) fast bf16, as the tests' bf16 lane does. On CUDA it
asks the device. int8 weights take bf16 activations where bf16 is native, and elsewhere
whichever activation dtype torch's int8 kernel measures faster.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = ("auto", "float32", "bfloat16", "int8")
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags; "bf16" is Arm's feature name
MIN_BF16_SPEEDUP = 1.2  # bf16 must clearly beat float32: a measured tie is noise, and bf16 costs accuracy
FORCE_ENV = "CONTGPT_CPU_BF16"  # "1": take this CPU as one with fast bf16, "0": as one without


@dataclass(frozen=True)
class Precision:
    """How a model's weights are stored and in which dtype its activations run."""

    name: str  # "float32", "bfloat16", "int8", or another torch dtype's name
    compute: torch.dtype  # activations, and every weight that is not quantized
    reason: str  # why: printed once by the demos

    @property
    def int8(self) -> bool:
        return self.name == "int8"

    def __str__(self) -> str:
        activations = f", activations {dtype_name(self.compute)}" if self.int8 else ""
        return f"{self.name}{activations} ({self.reason})"


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or None): the GPU when there is one, else the CPU; anything else as torch reads it."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve(dtype, device: torch.device) -> Precision:
    """A Precision from what the user asked for: one of DTYPES or a floating torch.dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type or one of {', '.join(DTYPES)}, not {dtype}")
        return Precision(dtype_name(dtype), dtype, "requested")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or a floating torch.dtype")
    if dtype in ("float32", "bfloat16"):
        return Precision(dtype, getattr(torch, dtype), "requested")
    fast, why = fast_bf16(device)
    if dtype == "auto":
        return Precision("bfloat16", torch.bfloat16, why) if fast else Precision("float32", torch.float32, why)
    problem = int8_kernel_problem(device, torch.bfloat16 if fast else torch.float32)
    if problem:
        fallback = "bfloat16" if fast else "float32"
        warnings.warn(f"int8 weights are not available here ({problem}); running in {fallback} instead", stacklevel=3)
        return Precision(fallback, getattr(torch, fallback), f"int8 requested, but {problem}")
    activations, why = int8_activations(device, fast, why)
    if activations == torch.float32:
        warnings.warn(
            "int8 weights with float32 activations run torch's generic kernel, which is slow; int8 pays where the kernel's bf16 path is fast",
            stacklevel=3,
        )
    return Precision("int8", activations, f"requested; {why}")


def fast_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether bf16 matmuls are native and fast on this device, the reason in words)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(device)} supports bfloat16"
        return False, f"{torch.cuda.get_device_name(device)} has no bfloat16"
    if device.type != "cpu":
        return False, f"no bfloat16 check for {device.type} devices"
    return cpu_bf16()


@functools.cache
def cpu_bf16() -> tuple[bool, str]:
    """(whether this CPU multiplies bf16 natively and fast, why): from CONTGPT_CPU_BF16 where it
    is set, else from the flags, else from the decision kept for this machine, else measured."""
    forced = os.environ.get(FORCE_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{FORCE_ENV} must be 1 (fast bf16) or 0 (no fast bf16), not {forced!r}; unset it to detect")
        return forced == "1", f"{FORCE_ENV}={forced} in the environment"
    flags = cpu_flags()
    native = sorted(flags & BF16_FLAGS) if flags is not None else []
    if flags is not None and not native:
        return False, "this CPU has no bf16 instructions (avx512_bf16, amx_bf16)"
    kept = kept_decision()
    if kept is None:
        kept = measure_and_keep()
    fast, speedup, day = kept["fast"], kept["speedup"], kept["measured"]
    have = f"{', '.join(native)}; " if native else ""
    if fast:
        return True, f"this CPU multiplies bf16 natively ({have}measured {speedup:.1f}x float32 on {day})"
    return False, f"bf16 matmul measured {speedup:.1f}x float32 on this CPU on {day} ({have}below {MIN_BF16_SPEEDUP}x)"


def machine_key() -> str:
    """What the bf16 decision depends on: the CPU's model and flags, and torch's version."""
    flags = cpu_flags() or set()
    return f"{cpu_model()} | {' '.join(sorted(flags & BF16_FLAGS))} | torch {torch.__version__}"


def decisions_file() -> Path:
    from download import cache_dir

    return cache_dir() / "precision.json"


def kept_decisions() -> dict:
    """Every kept decision, by machine_key(); {} where there is none yet or the file is unreadable."""
    try:
        kept = json.loads(decisions_file().read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


def kept_decision() -> dict | None:
    """This machine's kept decision {"fast", "speedup", "measured"}, or None (none, or a damaged one)."""
    kept = kept_decisions().get(machine_key())
    return kept if isinstance(kept, dict) and {"fast", "speedup", "measured"} <= kept.keys() else None


def measure_and_keep() -> dict:
    """Measure bf16 against float32, decide, and keep the decision for the next runs."""
    speedup = measured_bf16_speedup()
    decision = {"fast": speedup >= MIN_BF16_SPEEDUP, "speedup": round(speedup, 2), "measured": datetime.date.today().isoformat()}
    keep(kept_decisions() | {machine_key(): decision})
    return decision


def keep(decisions: dict) -> None:
    from download import write_atomic

    path = decisions_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: f.write(json.dumps(decisions, indent=1).encode()))
    except OSError as e:  # a read-only cache: decide for this run, measure again next time
        warnings.warn(f"could not keep the bf16 decision in {path} ({e}); it is measured again on each run", stacklevel=3)


def remeasure() -> tuple[bool, str]:
    """Forget this machine's kept decision, then decide again (measuring, where the flags allow bf16)."""
    kept = kept_decisions()
    if kept.pop(machine_key(), None) is not None:
        keep(kept)
    cpu_bf16.cache_clear()
    return cpu_bf16()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform says."""
    return cpuinfo_field(("model name", "Model", "CPU part")) or platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"); None elsewhere."""
    value = cpuinfo_field(("flags", "Features"))
    return set(value.split()) if value is not None else None


def cpuinfo_field(keys: tuple[str, ...]) -> str | None:
    """The value of the first line of /proc/cpuinfo whose key is one of `keys`, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return None


def fastest(op, repeats: int) -> float:
    """Seconds of op's fastest run after one warm-up call (which may build or pack kernels): the
    fastest, since another process on the machine can only make a run slower."""
    op()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        op()
        times.append(time.perf_counter() - start)
    return min(times)


def measured_bf16_speedup(n: int = 256, rounds: int = 5, repeats: int = 4) -> float:
    """float32 time / bfloat16 time of an n x n x n matmul (a few ms): the fastest run of each,
    measured in alternating rounds, so that a moment when the machine is busy slows both."""
    g = torch.Generator().manual_seed(0)  # the user's random state is none of a probe's business
    operands = {dtype: [torch.randn(n, n, generator=g).to(dtype) for _ in range(2)] for dtype in (torch.float32, torch.bfloat16)}
    best = {dtype: math.inf for dtype in operands}
    for _ in range(rounds):
        for dtype, (a, b) in operands.items():
            best[dtype] = min(best[dtype], fastest(functools.partial(torch.matmul, a, b), repeats))
    return best[torch.float32] / best[torch.bfloat16]


def int8_activations(device: torch.device, fast: bool, why: str) -> tuple[torch.dtype, str]:
    """The activation dtype for int8 weights, and why. bfloat16 where bf16 is native. Elsewhere
    on a CPU it is measured, not assumed: torch's int8 kernel converts bf16 activations in
    registers, so its bf16 path can be fast on a CPU whose bf16 matmuls crawl (on one AVX2 CPU
    here: 39 GFLOP/s with bf16 activations, 3.6 with float32, dense float32 13 at decoding)."""
    if fast or device.type != "cpu" or int8_kernel_problem(device, torch.bfloat16):
        return (torch.bfloat16 if fast else torch.float32), why
    speedup = measured_int8_bf16_speedup()
    if speedup >= MIN_BF16_SPEEDUP:
        return torch.bfloat16, f"{why}, but torch's int8 kernel measured {speedup:.1f}x faster with bf16 activations than with float32"
    return torch.float32, f"{why}; torch's int8 kernel measured {speedup:.1f}x with bf16 activations against float32"


@functools.cache
def measured_int8_bf16_speedup(rows: int = 8, n: int = 512, repeats: int = 5) -> float:
    """float32-activation time / bf16-activation time of torch's int8 weight kernel on a
    (rows, n) x (2n, n) product, best of `repeats` each (a few milliseconds)."""
    g = torch.Generator().manual_seed(0)  # the user's random state is none of a probe's business
    weights = torch.randint(-127, 128, (2 * n, n), dtype=torch.int8, generator=g)

    def best(dtype):
        x, scales = torch.randn(rows, n, dtype=dtype, generator=g), torch.rand(2 * n, dtype=dtype, generator=g)
        return fastest(lambda: torch.ops.aten._weight_int8pack_mm(x, weights, scales), repeats)

    return best(torch.float32) / best(torch.bfloat16)


def int8_kernel_problem(device: torch.device, activations: torch.dtype) -> str | None:
    """None if torch's packed int8 matmul runs on this device, else why not."""
    try:
        x = torch.ones(2, 64, dtype=activations, device=device)
        w = torch.ones(8, 64, dtype=torch.int8, device=device)
        torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(8, dtype=activations, device=device))
    except (RuntimeError, NotImplementedError) as e:
        return f"torch {torch.__version__} has no int8 weight kernel for {device.type} ({str(e).splitlines()[0][:120]})"
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="What dtype='auto' picks on this machine, and why.")
    parser.add_argument("--remeasure", action="store_true", help="measure bf16 against float32 again and keep the result")
    args = parser.parse_args(argv)
    fast, why = remeasure() if args.remeasure else cpu_bf16()
    print(f"auto on the CPU: {'bfloat16' if fast else 'float32'} ({why})")
    print(f"kept in {decisions_file()} for {machine_key()}")


if __name__ == "__main__":
    main()
