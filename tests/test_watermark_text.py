"""Text watermark (Kirchenbauer et al. 2023): keys, the logits hook, the detector, the CLI."""

from __future__ import annotations

import os
import stat

import pytest

from genforge import GenforgeError
from genforge.watermark.keys import KEY_FILE, derive, key_fingerprint, read_key_file, run_key


# ---------------------------------------------------------------- keys

def test_run_key_is_made_once_owner_only_and_reread(tmp_path):
    key = run_key(tmp_path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    assert run_key(tmp_path) == key and run_key(tmp_path, create=False) == key
    assert sorted(os.listdir(tmp_path)) == [KEY_FILE]  # no temporary left behind
    other = tmp_path / "other"
    other.mkdir()
    assert run_key(other) != key


def test_missing_short_and_hex_keys(tmp_path):
    with pytest.raises(GenforgeError, match="has no watermark.key"):
        run_key(tmp_path, create=False)
    with pytest.raises(GenforgeError, match="does not exist"):
        read_key_file(tmp_path / "nope")
    (tmp_path / "short").write_bytes(b"x" * 31)
    with pytest.raises(GenforgeError, match="31 bytes, needs at least 32"):
        read_key_file(tmp_path / "short")
    key = bytes(range(32))
    (tmp_path / "hex").write_text(key.hex() + "\n")
    assert read_key_file(tmp_path / "hex") == key


def test_fingerprint_and_subkeys_reveal_nothing_of_the_key():
    key = bytes(range(32))
    fp = key_fingerprint(key)
    assert len(fp) == 16 and fp not in key.hex()
    assert key_fingerprint(bytes(32)) != fp
    assert derive(key, "text/v1") != derive(key, "image/v1") and key not in derive(key, "text/v1")
