"""The watermark key of a run: 32 random bytes in RUN_DIR/watermark.key, owner-only (0600).

The key is a secret: whoever holds it can both detect and forge the mark (Kirchenbauer et al.
2023, section 7), so it is made at first use with ``secrets``, written atomically with its mode
set before any byte is written, and never printed or logged. What may be published (a model card,
stderr) is :func:`key_fingerprint`, a domain-separated hash that reveals nothing about the key.
Every use of the key derives a sub-key with HMAC (:func:`derive`), so the text and image marks
never share the raw key with each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from genforge import GenforgeError
from genforge.atomic import atomic_write

KEY_FILE = "watermark.key"
KEY_BYTES = 32
_FINGERPRINT_DOMAIN = b"genforge/watermark-key-fingerprint/v1"


def _check(key: bytes, where: str) -> bytes:
    if len(key) < KEY_BYTES:
        raise GenforgeError(f"watermark key {where} has {len(key)} bytes, needs at least {KEY_BYTES}; "
                            "use the run's watermark.key or make one with `head -c 32 /dev/urandom > K`")
    return key


def parse_key(data: bytes, where: str = "") -> bytes:
    """Raw bytes, or the same as hex text (64+ hex digits, whitespace ignored): both are accepted so a
    key can be kept in a password manager as text."""
    text = data.strip()
    if len(text) >= 2 * KEY_BYTES and len(text) % 2 == 0:
        with contextlib.suppress(ValueError):
            return _check(bytes.fromhex(text.decode("ascii")), where)
    return _check(bytes(data), where)


def read_key_file(path: str | Path) -> bytes:
    """The key stored in ``path`` (raw or hex). A missing, unreadable or short file is a GenforgeError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GenforgeError(f"watermark key file {path} does not exist; pass the run's "
                            f"{KEY_FILE} or use --run RUN_DIR") from None
    except OSError as e:
        raise GenforgeError(f"cannot read watermark key file {path} ({e.strerror or e}); check its "
                            "permissions (it should be readable by you only)") from None
    return parse_key(data, str(path))


@contextlib.contextmanager
def _dir_lock(folder: Path):
    """An flock on the folder itself, so two processes sampling a fresh run make one key, not two
    (the second would otherwise replace a key the first already marked text with)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def run_key(run_dir: str | Path, create: bool = True) -> bytes:
    """The run's watermark key, made (32 bytes from ``secrets``, mode 0600) at first use when ``create``.

    Without ``create``, a run with no key is a GenforgeError (detection needs the key that marked)."""
    run_dir = Path(run_dir)
    path = run_dir / KEY_FILE
    if path.exists() or not create:
        if not path.exists():
            raise GenforgeError(f"{run_dir} has no {KEY_FILE}: nothing sampled from it was watermarked "
                                "with a run key; pass --key-file K if the key is kept elsewhere")
        return read_key_file(path)
    if not run_dir.is_dir():
        raise GenforgeError(f"run directory {run_dir} does not exist; pass a trained run")
    with _dir_lock(run_dir):
        if path.exists():  # another process made it while we waited
            return read_key_file(path)
        key = secrets.token_bytes(KEY_BYTES)

        def write(f):
            os.fchmod(f.fileno(), stat.S_IRUSR | stat.S_IWUSR)  # 0600 before the first byte lands
            f.write(key)

        atomic_write(path, write)
    return key


def key_fingerprint(key: bytes) -> str:
    """16 hex digits of SHA-256 over a domain tag and the key: names the key, safe to publish."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + b"\x00" + bytes(key)).hexdigest()[:16]


def derive(key: bytes, purpose: str) -> bytes:
    """A 32-byte sub-key for one use (``"text/v1"``, ``"image/tree-ring/v1"``): HMAC-SHA256(key, purpose)."""
    return hmac.new(bytes(key), b"genforge/watermark/" + purpose.encode(), hashlib.sha256).digest()
