"""Every write the docs call atomic (the download cache's files, the reproduction's merged
records and summary, the demos' figures and JSON) never shows part of a file at its final name:
stopped at any of several points (an exception in the middle of a write, a killed process) the
final path holds the file as it was before, and a reader that looks while a slow write goes on
sees the old file or the whole new one, nothing between. Each test fails for a writer that
writes in place."""

import builtins
import io
import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

import download
import parallel
from conftest import ROOT
from demos import cli

OLD = b'{"key": "old", "value": "the file as it was"}\n'


class Interrupted(BaseException):
    """What stops a write part-way (a KeyboardInterrupt, as Ctrl-C would)."""


@contextmanager
def stopped_after(folder, budget: int):
    """Every file opened for writing under folder raises Interrupted once `budget` bytes of it
    have been written (the part before is written): Ctrl-C in the middle of a write."""
    real = builtins.open

    class Faulty(io.RawIOBase):
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            room = budget - self.written
            if len(data) > room:
                self.f.write(data[:room])
                self.f.flush()
                raise Interrupted
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def opened(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        inside = str(file).startswith(str(folder))
        return Faulty(f) if inside and any(m in mode for m in "wax+") else f

    builtins.open, io.open = opened, opened
    try:
        yield
    finally:
        builtins.open, io.open = real, real


def write_atomic(path, data: bytes):
    download.write_atomic(path, lambda out: [out.write(data[i : i + 4096]) for i in range(0, len(data), 4096)])


def save_json(path, data: bytes):
    cli.save_json({"payload": data.decode()}, path)


def save_figure(path, data: bytes):
    plt = cli.pyplot()
    fig, ax = plt.subplots()
    ax.plot(range(len(data) // 1000))
    cli.save_figure(fig, path)


def second_rank(path):
    """A second rank's records beside the run's file, for a merge to write into it."""
    rank1 = parallel.Records(path.parent, path.name.removesuffix(".jsonl"), 0).path(1)
    rank1.write_text("".join(json.dumps({"key": str(k), "value": "v" * 200}) + "\n" for k in range(100)))


def merge(path, data: bytes):
    parallel.Records(path.parent, path.name.removesuffix(".jsonl"), 0).merge([str(k) for k in range(100)])


WRITERS = {"download.write_atomic": write_atomic, "cli.save_json": save_json, "cli.save_figure": save_figure, "Records.merge": merge}
NAMES = {"download.write_atomic": "file.bin", "cli.save_json": "out.json", "cli.save_figure": "out.png", "Records.merge": "run.jsonl"}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("budget", [0, 1, 100, 5000])
def test_a_write_stopped_part_way_leaves_the_file_as_it_was(tmp_path, writer, budget):
    path = tmp_path / NAMES[writer]
    path.write_bytes(OLD)
    if writer == "Records.merge":
        second_rank(path)
    with stopped_after(tmp_path, budget), pytest.raises(Interrupted):
        WRITERS[writer](path, b"x" * 20000)
    assert path.read_bytes() == OLD
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # and nothing left beside it
    WRITERS[writer](path, b"x" * 20000)  # the same write, left alone, replaces it whole
    assert path.read_bytes() != OLD and path.stat().st_size > 1000


SLOW_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import download
def slowly(out):
    for _ in range(200):
        out.write(b"y" * 1000)
        out.flush()
        time.sleep(0.01)
download.write_atomic(__import__("pathlib").Path(sys.argv[2]), slowly)
"""


def test_a_killed_writer_leaves_the_old_file_and_a_reader_never_sees_a_part(tmp_path):
    """A process writes 200 KB over about 2 s; a reader polls the final path meanwhile; the
    writer is killed (SIGKILL: no cleanup) at 1 s. Then a second one runs to the end."""
    path = tmp_path / "file.bin"
    path.write_bytes(OLD)
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(path.read_bytes())
            time.sleep(0.002)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        killed = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(ROOT), str(path)])
        time.sleep(1.0)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        assert path.read_bytes() == OLD  # the kill left the old file at its name
        subprocess.run([sys.executable, "-c", SLOW_WRITER, str(ROOT), str(path)], check=True, timeout=60)
    finally:
        stop.set()
        reader.join(timeout=10)
    assert seen == {OLD, b"y" * 200_000}, sorted(len(s) for s in seen)  # the old file or the whole new one
