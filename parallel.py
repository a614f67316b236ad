"""Several processes on one job: torchrun's world, a shared work queue, and per-rank records.

    torchrun --nproc-per-node 4 demos/reproduce.py --task counting ...   # 4 ranks on one machine
    python demos/reproduce.py --task counting ...                        # a world of one

A process started by torchrun (or by srun running torchrun on each node) finds RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment. It
joins the others through torch.distributed's rendezvous and the gloo backend: only small
control messages travel between ranks (a ticket counter, a barrier, a word on who failed), never
tensors, so gloo serves GPU nodes as well and NCCL is not needed. Started by plain python, a
process is a world of one and talks to nobody.

Work is shared through a queue in the rendezvous store rather than dealt in fixed blocks: the
items are ordered by estimated cost, longest first, and each rank takes the next ticket when it
is free (store.add is atomic). So a fast rank simply takes more items, a slow item does not hold
a queue behind it, and the ranks finish within about one item of each other, however good the
cost estimate. Which rank runs which item is not reproducible; what an item gives is, and the
records are merged by key.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from download import write_atomic

RENDEZVOUS_SECONDS = float(os.environ.get("CONTGPT_RDZV_TIMEOUT", "300"))  # waiting for the other ranks
WORK_TIMEOUT = timedelta(hours=24)  # a barrier may wait for the slowest rank's last item


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def refuse_distributed(program: str, why: str) -> None:
    """Stop with a clear message when launched as one of several ranks (torchrun, srun)."""
    if world_size() > 1:
        raise SystemExit(
            f"{program} runs as a single process ({why}); it was started as one of {world_size()} ranks: run it with plain python, not torchrun"
        )


@dataclass
class World:
    """This process's place among the ranks of a job (a world of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    store: object = None  # the rendezvous store (torch.distributed.Store), None in a world of one

    def device(self, requested: str = "auto") -> torch.device:
        """ "auto" or "cuda": this rank's own GPU (cuda:LOCAL_RANK) when there are GPUs, else the CPU."""
        if requested in ("auto", "cuda", None) and torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():
                raise SystemExit(
                    f"rank {self.rank} is local rank {self.local_rank}, but this node has only "
                    f"{torch.cuda.device_count()} GPUs: start at most that many ranks per node"
                )
            return torch.device(f"cuda:{self.local_rank}")
        return torch.device("cpu" if requested in ("auto", None) else requested)

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def gather(self, value) -> list:
        """value from every rank, in rank order (any picklable object)."""
        if self.size == 1:
            return [value]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out

    def check(self, error: str | None, what: str) -> None:
        """Every rank says whether `what` worked for it; if it failed anywhere, every rank
        stops with the reasons, instead of the healthy ranks waiting forever."""
        failed = [(r, e) for r, e in enumerate(self.gather(error)) if e is not None]
        if failed:
            reasons = "; ".join(f"rank {r}: {e}" for r, e in failed)
            raise SystemExit(f"{what} failed on {len(failed)} of {self.size} ranks ({reasons})")

    def tickets(self, name: str, count: int):
        """Yield indices 0..count-1, each to exactly one rank, in order, as ranks ask for work."""
        if self.size == 1:
            yield from range(count)
            return
        key = f"contgpt/queue/{name}"
        while (ticket := self.store.add(key, 1) - 1) < count:
            yield ticket

    def close(self) -> None:
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def join() -> World:
    """Join the job torchrun started (or be a world of one), and give this rank its share of
    the CPU threads when the ranks share a machine's CPU."""
    size = world_size()
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        store, rank, size = next(torch.distributed.rendezvous("env://", rank=rank, world_size=size, timeout=timedelta(seconds=RENDEZVOUS_SECONDS)))
        torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=WORK_TIMEOUT)
    except (RuntimeError, ValueError, KeyError) as e:  # DistStoreError is a RuntimeError
        raise SystemExit(
            f"rank {rank} of {size} could not join the others at {where} within {RENDEZVOUS_SECONDS:.0f} s: "
            f"{str(e).splitlines()[0]}. Is rank 0 running, and do MASTER_ADDR/MASTER_PORT (--rdzv-endpoint) "
            f"name its machine and a free port?"
        ) from e
    if not torch.cuda.is_available():  # ranks that share the CPU share its cores
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // local_size))
    return World(rank, size, local_rank, local_size, store)


# ----------------------------------------------------------------------------- records


class Records:
    """Finished items of one run as JSON lines, one file per rank, merged into one by key.

    <name>.jsonl is the run's file; rank 0 appends to it, rank r > 0 to <name>.rank<r>.jsonl.
    Every line is written whole and flushed, so a kill can only leave a truncated last line:
    reading skips it (its item is simply run again) and each rank cuts it off its own file
    before appending. What is done is read from every file, so a run stopped at any point and
    started again with another number of ranks recomputes nothing finished and loses nothing.
    """

    def __init__(self, folder: Path, name: str, rank: int):
        self.folder, self.name, self.rank = folder, name, rank
        self.own = self.path(rank)

    def path(self, rank: int) -> Path:
        return self.folder / (f"{self.name}.jsonl" if rank == 0 else f"{self.name}.rank{rank}.jsonl")

    def files(self) -> list[Path]:
        return [self.path(0)] + sorted(self.folder.glob(f"{glob.escape(self.name)}.rank*.jsonl"))

    def read(self) -> list[dict]:
        """Every complete record of every file, the first of each key."""
        seen = {}
        for path in self.files():
            if path.exists():
                for record in read_lines(path):
                    seen.setdefault(record["key"], record)
        return list(seen.values())

    def append(self):
        """This rank's file, opened for appending after any truncated last line is cut off."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.own.exists():
            data = self.own.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) != len(data):
                print(
                    f"{self.own}: dropped a truncated last line ({len(data) - len(whole)} bytes, an item "
                    f"interrupted while it was written); it will be run again"
                )
                with open(self.own, "r+b") as f:
                    f.truncate(len(whole))
        return open(self.own, "a")

    def merge(self, order: list[str]) -> list[dict]:
        """Rank 0, once every rank is done: one file of the records in the dataset's order
        (keys not in `order` after them), written atomically; the other ranks' files go."""
        records = self.read()
        position = {key: i for i, key in enumerate(order)}
        records.sort(key=lambda r: (position.get(r["key"], len(order)), r["key"]))
        text = "".join(json.dumps(r) + "\n" for r in records)
        write_atomic(self.own, lambda out: out.write(text.encode()))
        for path in self.files()[1:]:
            path.unlink()
        return records


def read_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a truncated last line (a kill) is left out, even one cut
    just before its newline that happens to parse (Records.append cuts it off and it is run
    again). A damaged line anywhere else is an error that names it: nothing is dropped silently."""
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or number == len(lines):  # the last piece has no newline after it: cut short by a kill
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise SystemExit(f"{path}, line {number}, is not a JSON record ({e}); move the file away to run those items again") from e
    return records
