"""`genforge sample RUN --out piece.mid` on a piano-roll image run (jsb-roll): the image families'
samples written as music, with provenance, through the normal CLI (modalities/roll_music.py)."""

from __future__ import annotations

import mido
import numpy as np
import pytest
from tests.test_music import chorale

from genforge.cli import main
from genforge.data.music import read_midi_grid
from genforge.provenance import check_provenance

pytest.importorskip("pretty_midi")

TINY_DIFFUSION = ["model.channels=[8,8,8]", "model.sampling_steps=2", "train.max_steps=2", "train.batch_size=4",
                  "train.eval_every=2", "train.eval_batches=1", "train.checkpoint_every=2", "train.plot=false",
                  "train.device=cpu"]


def fake_jsb(path=None) -> dict:
    """Synthetic chorales in load_jsb's shape (train 6, val 2, test 2); the same on every call."""
    grids = [chorale(64 + 8 * i, i) for i in range(10)]
    return {"train": grids[:6], "val": grids[6:8], "test": grids[8:]}


@pytest.fixture(scope="module")
def roll_run(tmp_path_factory):
    """A 2-step diffusion-jsb-roll run on synthetic chorales (load_jsb answers them)."""
    import genforge.data.music as music

    run = tmp_path_factory.mktemp("roll") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(music, "load_jsb", fake_jsb)
        assert main(["train", "diffusion-jsb-roll", "--run-dir", str(run), "--no-progress", *TINY_DIFFUSION]) == 0
    return run


def test_a_roll_run_writes_midi_that_matches_its_decoded_rolls(roll_run, tmp_path, capsys):
    from genforge.data.music_roll import main as roll_main

    run = str(roll_run)
    mid = tmp_path / "piece.mid"
    assert main(["sample", run, "--out", str(mid), "--seed", "3", "--num-samples", "2"]) == 0
    pieces = [tmp_path / "piece-1.mid", tmp_path / "piece-2.mid"]
    assert not mid.exists() and all(p.is_file() for p in pieces)
    # The same draw written as raw rolls (unmarked, so the pixels are the model's) and decoded by
    # the standalone tool: the CLI's pieces are exactly those rolls as notes.
    npz = tmp_path / "rolls.npz"
    assert main(["sample", run, "--out", str(npz), "--seed", "3", "--num-samples", "2", "--no-watermark"]) == 0
    assert roll_main([str(npz), str(tmp_path / "ref.mid")]) == 0
    for i, piece in enumerate(pieces, 1):
        mido.MidiFile(piece)  # an independent reader parses it
        grid = read_midi_grid(piece)
        assert grid.shape[1] == 4 and len(grid) <= 32
        assert np.array_equal(grid, read_midi_grid(tmp_path / f"ref-{i}.mid"))
        check = check_provenance(piece)
        assert check.status == "intact" and check.record["seed"] == 3
        assert check.record["watermark"]["watermarked"] is False
    assert "decoded from piano rolls" in capsys.readouterr().out


def test_a_roll_run_writes_png_and_musicxml_pieces_with_provenance(roll_run, tmp_path):
    png = tmp_path / "roll.png"
    assert main(["sample", str(roll_run), "--out", str(png), "--seed", "0"]) == 0
    check = check_provenance(png)  # the piano-roll picture carries its record in its own chunk
    assert check.status == "intact" and check.record["options"]["out"] == str(png)
    pytest.importorskip("music21")
    xml = tmp_path / "score.musicxml"
    assert main(["sample", str(roll_run), "--out", str(xml), "--seed", "0"]) == 0
    assert "<score-partwise" in xml.read_text() and check_provenance(xml).status == "intact"


def test_wav_without_fluidsynth_is_one_line(roll_run, tmp_path, capsys, monkeypatch):
    import genforge.data.music_render as render

    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    assert main(["sample", str(roll_run), "--out", str(tmp_path / "x.wav"), "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "fluidsynth" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("extra, says", [
    (["--nearest"], "--nearest draws an image grid"),
    (["--watermark-strength", "3"], "--watermark-strength sets a pixel watermark"),
    (["--sign"], "--sign signs PNG image grids"),
    (["--trajectory"], "--trajectory draws an image grid"),
    (["--prompt-midi", "a.mid"], "--prompt-midi does not apply to this diffusion run"),
])
def test_options_that_do_not_apply_to_roll_music_are_refused_in_one_line(roll_run, tmp_path, capsys, extra, says):
    out = tmp_path / "p.mid"
    assert main(["sample", str(roll_run), "--out", str(out), "--seed", "0", *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())  # refused before anything is written


def test_images_stay_images_without_a_music_out(roll_run, tmp_path):
    """--out .npz keeps the rolls; no --out writes the image grid (as every image run)."""
    assert main(["sample", str(roll_run), "--out", str(tmp_path / "r.npz"), "--num-samples", "2", "--seed", "0"]) == 0
    assert np.load(tmp_path / "r.npz")["images"].shape == (2, 1, 48, 32)
    assert main(["sample", str(roll_run), "--out", str(tmp_path / "r.txt")]) == 2
