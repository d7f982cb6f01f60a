"""Where user-facing outputs go: `sample --out`, `metrics --json`, and default sample names.

Two rules keep every writer from losing data: a path the user names is never an existing
folder or file (genforge never deletes or replaces what it did not make), and a default name
is claimed with ``O_EXCL`` so two `genforge sample` calls in the same second get two files.
"""

from __future__ import annotations

import os
from pathlib import Path

from genforge import GenforgeError


def check_out(path: str | Path, flag: str = "--out") -> Path:
    """Refuse a ``flag`` path that already exists (a folder, or a file this call would replace)."""
    path = Path(path)
    if path.is_dir():
        raise GenforgeError(f"{flag} {path} is a folder; name a new file (inside it, if you like)")
    if path.exists() or path.is_symlink():
        raise GenforgeError(f"{flag} {path} already exists; genforge does not replace files: choose a "
                            "new name or delete it first")
    return path


def unique_output(folder: str | Path, stem: str, suffix: str) -> Path:
    """A new, empty file ``folder/stem{suffix}`` (else ``stem-2``, ``stem-3``, ...), created with
    ``O_EXCL`` so that no other process (another `sample` in the same second) gets the same name.
    The caller then replaces it atomically with the real content."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = folder / (f"{stem}{suffix}" if i == 1 else f"{stem}-{i}{suffix}")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        except OSError as e:
            raise GenforgeError(f"cannot write {path} ({e.strerror}); check the folder is writable") from None
        return path
    raise GenforgeError(f"{folder} already holds 10,000 files named {stem}*{suffix}; clear some out")
