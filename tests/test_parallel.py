"""demos/reproduce.py over several ranks on the CPU (torchrun, gloo): the same records and
summary as one process, resume across world sizes, and the failures a cluster job meets."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import parallel
from conftest import CACHE, ROOT, assert_close, fetch_or_skip

pytestmark = pytest.mark.slow  # torchrun processes on the real default model

MODEL = "smollm2-135m"  # small and quick to load; the protocol does not need a model that counts
REPRODUCE = str(ROOT / "demos" / "reproduce.py")


@pytest.fixture(scope="module")
def model():
    from load import fetch_model

    os.environ["CONTGPT_CACHE"] = str(CACHE)
    fetch_or_skip(lambda: fetch_model(MODEL))
    return MODEL


def env(**extra):
    return {**os.environ, "CONTGPT_CACHE": str(CACHE), "PYTHONUNBUFFERED": "1", **extra}


def args(task, out, limit, samples=5):
    return [REPRODUCE, "--task", task, "--model", MODEL, "--dtype", "float32", "--limit", str(limit), "--samples", str(samples), "--out", str(out)]


def single(task, out, limit, samples=5):
    done = subprocess.run([sys.executable, *args(task, out, limit, samples)], capture_output=True, text=True, env=env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def torchrun(ranks, task, out, limit, samples=5, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *args(task, out, limit, samples)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), **popen)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def records(folder, task):
    name = f"{task}_{MODEL}_float32_builtin"
    lines = (folder / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], json.loads((folder / f"{name}.summary.json").read_text())


@pytest.mark.parametrize("task", ["counting", "interpolation"])
def test_two_ranks_equal_one_process(model, task, tmp_path):
    single(task, tmp_path / "one", limit=6)
    out = finish(torchrun(2, task, tmp_path / "two", limit=6))
    assert "6 to run on 2 ranks" in out
    ours, summary = records(tmp_path / "two", task)
    reference, reference_summary = records(tmp_path / "one", task)
    assert [r["key"] for r in ours] == [r["key"] for r in reference]  # each item once, in the dataset's order
    assert not list((tmp_path / "two").glob("*.rank*.jsonl"))  # merged, and the per-rank files gone
    for a, b in zip(ours, reference):
        assert_close(a["probs"], b["probs"], 1e-5, a["key"])  # bit for bit here (2026-12-02); ranks may use other thread counts
    figures = {k: v for k, v in reference_summary.items() if isinstance(v, float) and k != "seconds"}
    assert figures and all(summary[k] == pytest.approx(v, abs=1e-6) for k, v in figures.items())
    assert summary["ranks"] == 2 and reference_summary["ranks"] == 1


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it (torchrun starts each worker in a session
    of its own, so killing torchrun's group alone would leave the workers running)."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    for child in children:
        kill_tree(child)
    os.kill(pid, signal.SIGKILL)


def lines_in(folder):
    return sum(len(p.read_text().splitlines()) for p in folder.glob("*.jsonl")) if folder.exists() else 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers in /proc")
def test_a_stopped_run_resumes_with_another_number_of_ranks(model, tmp_path):
    """Two ranks stopped (every process killed) after a few items, a truncated line left at
    the end of a file, then one rank, then two again: every item exactly once."""
    out = tmp_path / "run"
    job = torchrun(2, "counting", out, limit=16, samples=10)
    deadline = time.time() + 300
    while lines_in(out) < 3 and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    kill_tree(job.pid)
    job.wait(timeout=60)
    first = lines_in(out)
    assert 3 <= first < 16, first
    with open(out / f"counting_{MODEL}_float32_builtin.rank1.jsonl", "a") as f:
        f.write('{"key": "15", "info": {"n"')  # a kill in the middle of a write
    again = single("counting", out, limit=16, samples=10)
    assert f"{first} already done, {16 - first} to run" in again.stdout
    done, _ = records(out, "counting")
    assert [r["key"] for r in done] == [str(i) for i in range(16)] and not list(out.glob("*.rank*.jsonl"))
    finish(torchrun(2, "counting", out, limit=20, samples=10))  # four more, on two ranks
    done, summary = records(out, "counting")
    assert [r["key"] for r in done] == [str(i) for i in range(20)] and summary["run"] == 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_process(rank, world, port, extra_args, out):
    """One rank started by hand, as torchrun would start it."""
    environment = env(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CONTGPT_RDZV_TIMEOUT="5",
    )
    command = [sys.executable, *args("counting", out, limit=4), *extra_args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def test_an_unreachable_rendezvous_is_named(model, tmp_path):
    port = free_port()  # nobody listens there: rank 0 never comes
    lonely = rank_process(1, 2, port, [], tmp_path)
    _, err = lonely.communicate(timeout=120)
    assert lonely.returncode == 1 and f"rank 1 of 2 could not join the others at 127.0.0.1:{port}" in err


def test_a_rank_that_cannot_load_the_model_stops_every_rank(model, tmp_path):
    port = free_port()
    ranks = [rank_process(0, 2, port, [], tmp_path), rank_process(1, 2, port, ["--model", str(tmp_path / "missing.gguf")], tmp_path)]
    outputs = [p.communicate(timeout=300) for p in ranks]
    assert [p.returncode for p in ranks] == [1, 1]
    for _, err in outputs:
        assert "failed on 1 of 2 ranks (rank 1: FileNotFoundError: no checkpoint at" in err


def test_a_damaged_record_in_the_middle_is_an_error_not_a_loss(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"key": "0"}\n{"key": \n{"key": "2"}\n')
    with pytest.raises(SystemExit, match="x.jsonl, line 2, is not a JSON record"):
        parallel.read_lines(path)
    path.write_text('{"key": "0"}\n{"key": "1"')  # only a truncated last line is a kill's doing
    assert parallel.read_lines(path) == [{"key": "0"}]


def test_bench_and_demos_refuse_to_run_as_several_ranks(tmp_path):
    for program in ("bench.py", "demos/apples.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / program), "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            env=env(WORLD_SIZE="2", RANK="0"),
            timeout=120,
        )
        assert done.returncode == 1 and "runs as a single process" in done.stderr and "not torchrun" in done.stderr, program
