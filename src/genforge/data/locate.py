"""Finding dataset files: $GENFORGE_DATA, system locations, then a checksummed download.

Every dataset file is looked up in this order, so a machine without internet
works as long as one of the first places holds the file:

1. ``$GENFORGE_DATA/<relative path>``
2. known system folders (e.g. Debian's ``/usr/share/datasets``)
3. the download cache ``$GENFORGE_CACHE/downloads/<relative path>``
4. a download from the canonical URL, verified against its sha256 before it is
   moved into the cache (atomically, so an interrupted download leaves nothing).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from genforge import GenforgeError

DATA_ENV = "GENFORGE_DATA"
CACHE_ENV = "GENFORGE_CACHE"


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "genforge")
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None) -> Path:
    """Fetch ``url`` into ``dest`` (atomically), verifying its sha256 when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            while block := response.read(1 << 20):
                out.write(block)
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256:
                raise GenforgeError(
                    f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                    "the file is corrupt or has changed upstream"
                )
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise GenforgeError(
            f"could not download {url} ({getattr(e, 'reason', e)}); you look offline: "
            f"put the file at ${DATA_ENV}/{dest.name} or under a folder ${DATA_ENV} points to"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def locate(relative: str, url: str | None = None, sha256: str | None = None,
           system_dirs: tuple[str, ...] = ()) -> Path:
    """Return a local path for dataset file ``relative`` (e.g. 'tinyshakespeare/input.txt')."""
    candidates = []
    if root := os.environ.get(DATA_ENV):
        candidates.append(Path(root) / relative)
    candidates += [Path(d) / Path(relative).name for d in system_dirs]
    cached = cache_dir() / "downloads" / relative
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            return path
    if url is None:
        raise GenforgeError(
            f"dataset file '{relative}' not found; set ${DATA_ENV} to a folder that holds it"
        )
    try:
        return download(url, cached, sha256)
    except GenforgeError as e:
        raise GenforgeError(f"'{relative}' is not on this machine and {e}") from None
