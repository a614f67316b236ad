"""Several processes on one job: torchrun's environment, read in one place."""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def refuse_distributed(program: str, why: str) -> None:
    """Stop with a clear message when launched as one of several ranks (torchrun, srun)."""
    if world_size() > 1:
        raise SystemExit(f"{program} runs as a single process ({why}); it was started as one of {world_size()} "
                         f"ranks: run it with plain python, not torchrun")  # fmt: skip
