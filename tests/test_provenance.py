"""Provenance on every file `genforge sample` writes: PNG chunk, sidecars, and `genforge verify`."""

import json
from pathlib import Path

import pytest

from genforge import checkpoint as ckpt
from genforge.cli import main
from genforge.provenance import CHUNK, check_provenance, sidecar_path

TOY = str(Path(__file__).with_name("toy-digits.toml"))
QUIET = ["train.max_steps=2", "train.plot=false", "--no-progress"]
TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "train.batch_size=4", "train.max_steps=2", "train.eval_every=2", "train.plot=false"]


def served_sha(run_dir: Path) -> str:
    """The sha256 the best/latest checkpoint's manifest gives its weights (EMA when kept)."""
    path = ckpt.require_checkpoint(run_dir, "auto")
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    name = ckpt.EMA_WEIGHTS if (path / ckpt.EMA_WEIGHTS).is_file() else ckpt.WEIGHTS
    return manifest["sha256"][name]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("prov") / "img"
    assert main(["train", TOY, "--run-dir", str(run), *QUIET]) == 0
    return run


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("provtext")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY_GPT, "--run-dir", str(root / "run"),
                 "--no-progress"]) == 0
    return root / "run"


def test_png_carries_seed_weights_hash_and_options_and_verifies(image_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(image_run), "--num-samples", "4", "--seed", "7", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert CHUNK in im.info  # an iTXt chunk any PNG reader can list
    check = check_provenance(out)
    assert check.status == "intact"
    rec = check.record
    assert rec["seed"] == 7 and rec["options"]["num_samples"] == 4
    assert rec["model"]["weights_sha256"] == served_sha(image_run)
    assert rec["model"]["run"] == image_run.name and rec["checkpoint"].startswith(("step_", "best"))
    assert rec["genforge_version"] and rec["created"].endswith("Z")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "VALID" in text and "seed: 7" in text and "not signed" in text


def test_random_seed_is_recorded_and_repeats_the_file(image_run, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", str(image_run), "--num-samples", "2", "--out", str(a)]) == 0
    seed = check_provenance(a).record["seed"]
    assert main(["sample", str(image_run), "--num-samples", "2", "--seed", str(seed), "--out", str(b)]) == 0
    assert check_provenance(a).record["content"] == check_provenance(b).record["content"]  # same pixels


def test_npz_gets_a_sidecar_and_an_edited_pixel_is_caught(image_run, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    assert main(["sample", str(image_run), "--num-samples", "3", "--seed", "1", "--out", str(npz)]) == 0
    assert check_provenance(npz).status == "intact" and sidecar_path(npz).is_file()
    png = tmp_path / "p.png"
    assert main(["sample", str(image_run), "--num-samples", "3", "--seed", "1", "--out", str(png)]) == 0
    from PIL import Image

    with Image.open(png) as im:  # change one pixel and keep the chunk: the hash no longer holds
        info = im.info
        im = im.convert("RGB")
        im.putpixel((5, 5), (0, 0, 0) if im.getpixel((5, 5)) != (0, 0, 0) else (255, 255, 255))
        from PIL.PngImagePlugin import PngInfo

        meta = PngInfo()
        meta.add_itxt(CHUNK, info[CHUNK])
        im.save(png, pnginfo=meta)
    capsys.readouterr()
    assert main(["verify", str(png)]) == 1
    assert "pixels differ" in capsys.readouterr().out


def test_text_file_stays_clean_and_its_sidecar_catches_edits(text_run, tmp_path, capsys):
    out = tmp_path / "t.txt"
    assert main(["sample", str(text_run), "--prompt", "to", "--max-new-tokens", "8", "--seed", "3",
                 "--num-samples", "2", "--out", str(out)]) == 0
    body = out.read_text()
    assert "seed" not in body and "genforge" not in body  # the data file holds only the samples
    rec = json.loads(sidecar_path(out).read_text())
    assert rec["seed"] == 3 and rec["options"]["prompt"] == ["to"]
    assert rec["model"]["weights_sha256"] == served_sha(text_run)
    capsys.readouterr()
    assert main(["verify", str(sidecar_path(out))]) == 0  # naming the sidecar checks its file
    out.write_text(body + "an added line\n")
    assert main(["verify", str(out)]) == 1
    assert "differs from the file genforge wrote" in capsys.readouterr().out


def test_smiles_file_has_no_header_and_a_sidecar(tmp_path, capsys):
    pytest.importorskip("rdkit")
    smi = tmp_path / "m.smi"
    smi.write_text("".join(s + "\n" for s in ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "CCCC", "OCCO"] * 20))
    run = tmp_path / "run"
    assert main(["train", "gpt-demo", f"data.name={smi}", "model.n_layer=1", "model.n_head=2",
                 "model.n_embd=16", "model.block_size=24", "train.batch_size=8", "train.max_steps=2",
                 "train.plot=false", "--run-dir", str(run), "--no-progress"]) == 0
    out = tmp_path / "s.smi"
    assert main(["sample", str(run), "--num-samples", "5", "--seed", "4", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and not any(line.startswith("#") for line in lines)
    rec = json.loads(sidecar_path(out).read_text())
    assert rec["seed"] == 4 and rec["model"]["modality"] == "molecule"
    assert rec["content"]["sha256"] and check_provenance(out).status == "intact"


def test_verify_without_provenance_and_bad_input(tmp_path, capsys):
    plain = tmp_path / "plain.txt"
    plain.write_text("hello\n")
    assert main(["verify", str(plain)]) == 1
    assert "NO PROVENANCE" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_sign_is_refused_where_it_cannot_apply(text_run, image_run, tmp_path, capsys):
    assert main(["sample", str(text_run), "--sign", "--out", str(tmp_path / "t.txt")]) == 2
    assert "--sign does not apply" in capsys.readouterr().err  # text runs write no PNG
    assert main(["sample", str(image_run), "--sign-cert", "x.pem", "--out", str(tmp_path / "a.png")]) == 2
    assert "apply with --sign" in capsys.readouterr().err
    assert main(["sample", str(image_run), "--sign", "--out", str(tmp_path / "a.npz")]) == 2
    assert "writes no PNG" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "a.npz").exists()


def test_an_existing_sidecar_is_never_replaced(text_run, tmp_path, capsys):
    out = tmp_path / "t.txt"
    sidecar_path(out).write_text("mine")
    assert main(["sample", str(text_run), "--max-new-tokens", "4", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and sidecar_path(out).read_text() == "mine"
