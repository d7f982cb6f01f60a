"""C2PA content credentials: the local test chain, signing at sample time, verify, tamper, trust."""

import os
import stat
from pathlib import Path

import pytest

from genforge.cli import main

pytest.importorskip("c2pa")
TOY = str(Path(__file__).with_name("toy-digits.toml"))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cred") / "img"
    assert main(["train", TOY, "--run-dir", str(run), "train.max_steps=2", "train.plot=false",
                 "--no-progress"]) == 0
    return run


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "chain"
    assert main(["keys", "init", "--dir", str(keys)]) == 0
    return keys


def signed_png(image_run, chain, path: Path) -> Path:
    assert main(["sample", str(image_run), "--num-samples", "4", "--seed", "2", "--out", str(path), "--sign",
                 "--sign-cert", str(chain / "signer.pem"), "--sign-key", str(chain / "signer.key")]) == 0
    return path


def test_keys_init_writes_owner_only_keys_and_refuses_to_replace(chain, capsys):
    for name in ("root-ca.key", "signer.key"):
        assert stat.S_IMODE(os.stat(chain / name).st_mode) == 0o600
    assert b"PRIVATE KEY" not in (chain / "signer.pem").read_bytes()
    assert main(["keys", "init", "--dir", str(chain)]) == 2
    assert "--force" in capsys.readouterr().err


def test_sign_verify_tamper_verify_again(image_run, chain, tmp_path, capsys):
    png = signed_png(image_run, chain, tmp_path / "s.png")
    capsys.readouterr()
    assert main(["verify", str(png)]) == 3  # valid, but nobody said to trust the test root
    assert "not trusted" in capsys.readouterr().out
    assert main(["verify", str(png), "--trust-anchor", str(chain / "root-ca.pem")]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "(trusted)" in out and "genforge test signer" in out
    data = bytearray(png.read_bytes())
    data[data.index(b"IDAT") + 12] ^= 0x01  # one flipped bit in the image data
    png.write_bytes(bytes(data))
    assert main(["verify", str(png), "--trust-anchor", str(chain / "root-ca.pem")]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "assertion.dataHash.mismatch" in out and "image bytes do not match" in out


def test_a_signer_outside_the_anchors_is_untrusted(image_run, chain, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["keys", "init", "--dir", str(other)]) == 0
    png = signed_png(image_run, chain, tmp_path / "s.png")
    capsys.readouterr()
    assert main(["verify", str(png), "--trust-anchor", str(other / "root-ca.pem")]) == 3
    assert "signingCredential.untrusted" in capsys.readouterr().out


def test_unsigned_png_is_untrusted_only_when_anchors_are_demanded(image_run, chain, tmp_path, capsys):
    png = tmp_path / "u.png"
    assert main(["sample", str(image_run), "--num-samples", "2", "--out", str(png)]) == 0
    assert main(["verify", str(png)]) == 0
    assert main(["verify", str(png), "--trust-anchor", str(chain / "root-ca.pem")]) == 3


def test_default_chain_from_genforge_keys(image_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENFORGE_KEYS", str(tmp_path / "k"))
    assert main(["sample", str(image_run), "--sign", "--out", str(tmp_path / "a.png")]) == 2
    assert "genforge keys init" in capsys.readouterr().err  # no chain yet: says how to make one
    assert main(["keys", "init"]) == 0
    png = tmp_path / "b.png"
    assert main(["sample", str(image_run), "--num-samples", "2", "--sign", "--out", str(png)]) == 0
    assert main(["verify", str(png), "--trust-anchor", str(tmp_path / "k" / "root-ca.pem")]) == 0


def test_bad_keys_and_anchors_are_one_line_errors(image_run, chain, tmp_path, capsys):
    other = tmp_path / "o"
    assert main(["keys", "init", "--dir", str(other)]) == 0
    assert main(["sample", str(image_run), "--sign", "--sign-cert", str(chain / "signer.pem"),
                 "--sign-key", str(other / "signer.key"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "is not the key of" in err and "PRIVATE" not in err and not (tmp_path / "x.png").exists()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    png = signed_png(image_run, chain, tmp_path / "s.png")
    assert main(["verify", str(png), "--trust-anchor", str(junk)]) == 2
    assert "not a PEM certificate" in capsys.readouterr().err


def test_verify_json(image_run, chain, tmp_path, capsys):
    import json

    png = signed_png(image_run, chain, tmp_path / "s.png")
    capsys.readouterr()
    assert main(["verify", str(png), "--json", "--trust-anchor", str(chain / "root-ca.pem")]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["verdict"] == "valid" and row["credentials"]["status"] == "trusted"
    assert row["provenance"]["record"]["seed"] == 2
