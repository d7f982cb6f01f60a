"""Atomic file writes: readers see the old file or the new one, never half of one.

Every file genforge writes (checkpoint pointers, eval.json, samples, caches, oracle.csv)
goes through :func:`atomic_write`: the bytes go to a hidden temporary file in the same
folder, are flushed and fsynced, then ``os.replace`` puts it in place and the folder is
fsynced, so a crash or a kill at any moment leaves either the previous file or the new one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from genforge import GenforgeError


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (not every filesystem lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` on a binary file object, then put the result at ``path`` atomically.

    An OSError (read-only folder, full disk) becomes one GenforgeError that names the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GenforgeError(f"cannot write {path} ({e.strerror or e}); check that the folder is "
                            "writable and the disk is not full") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
