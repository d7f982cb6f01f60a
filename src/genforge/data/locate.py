"""Finding dataset files: $GENFORGE_DATA, system locations, then a checksummed download.

Every dataset file is looked up in this order, so a machine without internet
works as long as one of the first places holds the file:

1. ``$GENFORGE_DATA/<relative path>``
2. known system folders (e.g. Debian's ``/usr/share/datasets``)
3. the download cache ``$GENFORGE_CACHE/downloads/<relative path>``
4. a download from the canonical URL, verified against its sha256 before it is
   moved into the cache (atomically, so an interrupted download leaves nothing).

Errors tell a network failure ("you look offline") from a failure to write the
cache (a read-only folder, a full disk): the fixes differ.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from genforge import GenforgeError

DATA_ENV = "GENFORGE_DATA"
CACHE_ENV = "GENFORGE_CACHE"

# What a failed connection raises. URLError and the socket errors are OSErrors too,
# so these are caught around the network calls only, never around file writes.
NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, socket.gaierror,
                  socket.herror, http.client.HTTPException)


def cache_write_error(path: Path, err: OSError) -> GenforgeError:
    """The one-line error for a cache folder or file that cannot be written."""
    reason = err.strerror or str(err)
    return GenforgeError(f"cannot write to {path} ({reason}); set ${CACHE_ENV} to a writable folder")


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "genforge")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cache_write_error(path, e) from None
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _offline_error(url: str, err: BaseException, relative: str) -> GenforgeError:
    if isinstance(err, urllib.error.HTTPError):  # the server answered: not offline
        what = f"the server answered HTTP {err.code} ({err.reason}); the file may have moved"
    else:
        reason = str(getattr(err, "reason", None) or err) or type(err).__name__
        what = f"{reason}; you look offline"
    return GenforgeError(f"could not download {url} ({what}): put the file at ${DATA_ENV}/{relative}")


def _copy_url(url: str, out, relative: str) -> None:
    """Stream ``url`` into the open file ``out``. Network errors -> the offline message;
    write errors propagate as OSError, so the caller reports the folder that failed."""
    try:
        response = urllib.request.urlopen(url, timeout=30)
    except NETWORK_ERRORS as e:
        raise _offline_error(url, e, relative) from None
    with response:
        while True:
            try:
                block = response.read(1 << 20)
            except NETWORK_ERRORS as e:
                raise _offline_error(url, e, relative) from None
            if not block:
                return
            out.write(block)


def download(url: str, dest: Path, sha256: str | None, relative: str | None = None) -> Path:
    """Fetch ``url`` into ``dest`` (atomically), verifying its sha256 when given.

    ``relative`` is the path under ``$GENFORGE_DATA`` that the offline message names.
    """
    relative = relative or dest.name
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    except OSError as e:
        raise cache_write_error(dest.parent, e) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_url(url, out, relative)
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256:
                raise GenforgeError(
                    f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                    "the file is corrupt or has changed upstream"
                )
        os.replace(tmp, dest)
        return dest
    except OSError as e:  # network errors were turned into GenforgeError inside _copy_url
        raise cache_write_error(dest.parent, e) from None
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
            f"dataset file '{relative}' not found; put it at ${DATA_ENV}/{relative}"
        )
    try:
        return download(url, cached, sha256, relative)
    except GenforgeError as e:
        raise GenforgeError(f"'{relative}' is not on this machine and {e}") from None
