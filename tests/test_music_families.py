"""Families on music besides the GPT: the phrase VAE (seqvae) and the image families on piano rolls."""

from __future__ import annotations

import mido
import numpy as np
import pytest
import torch
from tests.test_music import chorale, jsb_json, mido_notes

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import DataConfig
from genforge.data.music import REST, grid_to_midi, read_midi_grid
from genforge.data.music_phrases import load_phrases, phrase_steps, phrases_of
from genforge.data.music_tokens import MusicTokenizer
from genforge.families.seqvae import SequenceVAE, SeqVAEConfig
from genforge.modalities.music_latent import phrase_grid

pytest.importorskip("pretty_midi")

TINY_VAE = ["model.embedding_size=8", "model.encoder_hidden=8", "model.decoder_hidden=16", "model.latent_size=4",
            "model.max_length=34", "train.max_steps=4", "train.batch_size=4", "train.eval_every=2",
            "train.eval_batches=1", "train.checkpoint_every=2", "train.warmup_steps=1", "train.plot=false",
            "train.device=cpu", "data.transpose=0", "model.kl_warmup_steps=0"]


def test_phrases_start_on_bar_lines_and_held_out_ones_do_not_overlap(tmp_path):
    assert phrase_steps(130) == 32 and phrase_steps(34) == 8
    g = chorale(70, 0)
    ph = phrases_of(g, 32, 16)
    assert len(ph) == 3 and all((p == g[16 * i:16 * i + 32]).all() for i, p in enumerate(ph))
    data = load_phrases(DataConfig(name=jsb_json(tmp_path / "j.json"), music_tokens="grid"), 34)
    assert data.spec.max_length == 34 and data.steps == 8
    b = data.train.get(torch.arange(3))
    assert b["x"].shape == (3, 33) and bool(b["mask"].all())  # every phrase is exactly 8 steps
    tok = MusicTokenizer("grid")
    test_grids = [np.asarray(x) for x in __import__("json").loads((tmp_path / "j.json").read_text())["test"]]
    expect = [p for g in test_grids for p in phrases_of(g, 8, 16)]  # stride = max(steps, one bar)
    assert len(data.test) == len(expect)
    assert tok.to_grid(data.test.rows[0]).tolist() == expect[0].tolist()
    with pytest.raises(Exception, match="whole 16th step"):
        load_phrases(DataConfig(name="jsb", music_tokens="grid"), 5)


def test_phrase_grid_cuts_and_pads_with_rests():
    g = chorale(5, 1)
    assert (phrase_grid(g, 3) == g[:3]).all()
    p = phrase_grid(g, 8)
    assert (p[:5] == g).all() and (p[5:] == REST).all()


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seqvae")
    data = jsb_json(tmp / "tiny.json")
    run = tmp / "run"
    assert main(["train", "seqvae-jsb", "--run-dir", str(run), "--no-progress", f"data.name={data}", *TINY_VAE]) == 0
    return run


def test_tiny_seqvae_trains_on_chorales_and_samples_midi(vae_run, tmp_path, capsys):
    assert any(p.suffix == ".mid" for p in (vae_run / "samples").iterdir())  # previews are MIDI
    out = tmp_path / "p.mid"
    assert main(["sample", str(vae_run), "--out", str(out), "--num-samples", "2", "--seed", "0"]) == 0
    for f in (tmp_path / "p-1.mid", tmp_path / "p-2.mid"):
        mido.MidiFile(f)  # an independent reader parses it
        assert not mido_notes(f) or len(read_midi_grid(f)) <= 8  # one phrase at most
    a, b = grid_to_midi(chorale(8, 3), tmp_path / "a.mid"), grid_to_midi(chorale(8, 4), tmp_path / "b.mid")
    path = tmp_path / "path.mid"
    assert main(["sample", str(vae_run), "--interpolate", str(a), str(b), "--interp-points", "3",
                 "--out", str(path)]) == 0
    assert mido.MidiFile(path).length > 0
    # three phrases of 8 steps in sequence (the last may end in rests, which MIDI does not keep)
    assert len(read_midi_grid(path)) <= 24
    assert main(["sample", str(vae_run), "--around", str(a), "--num-samples", "2", "--out",
                 str(tmp_path / "r.mid")]) == 0
    capsys.readouterr()


def test_seqvae_sample_refuses_gpt_options(vae_run, tmp_path, capsys):
    assert main(["sample", str(vae_run), "--steps", "3", "--out", str(tmp_path / "x.mid")]) == 2
    assert "continue a token stream" in capsys.readouterr().err
    a = grid_to_midi(chorale(8, 3), tmp_path / "a.mid")
    assert main(["sample", str(vae_run), "--interpolate", str(a), str(a), "--num-samples", "2"]) == 2
    assert "drop --num-samples" in capsys.readouterr().err
    assert main(["sample", str(vae_run), "--interpolate", str(a), str(tmp_path / "none.mid")]) == 2
    assert "no such MIDI file" in capsys.readouterr().err
    assert not (tmp_path / "x.mid").exists()


def test_seqvae_eval_reports_the_bound_per_note_and_the_music_table(vae_run, capsys):
    from genforge.evaluate import evaluate_run
    from genforge.runs import load_run

    run = load_run(vae_run, device="cpu")
    report = evaluate_run(run, progress=False, num_samples=3, max_batches=1)
    assert report["phrase_steps"] == 8
    # the bound per note is the bound per phrase over its 32 grid tokens
    assert report["nll_bound_per_note_test"] == pytest.approx(report["nll_bound_per_phrase_test"] / 32)
    assert report["nll_bound_per_phrase_test"] > report["kl_per_phrase_test"] >= 0
    assert "pitch_class_js" in report or "key_consistency" in report


def test_interpolation_endpoints_decode_to_the_two_phrases():
    """A phrase VAE fitted to two phrases: the path's endpoints are their greedy reconstructions."""
    tok = MusicTokenizer("grid")
    grids = [chorale(4, 5), chorale(4, 6)]
    rows = [[tok.bos_id, *tok.encode_grid(g), tok.eos_id] for g in grids]
    from genforge.data.sequences import pad_sequences
    from genforge.data.spec import DataSpec

    ids, mask = pad_sequences(rows, tok.pad_id, 18)
    spec = DataSpec(modality="music", vocab_size=tok.vocab_size, special_ids={"pad": tok.pad_id, "bos": tok.bos_id,
                                                                               "eos": tok.eos_id}, max_length=18)
    torch.manual_seed(0)
    model = SequenceVAE(SeqVAEConfig(embedding_size=16, encoder_hidden=16, decoder_hidden=32, decoder_layers=1,
                                     latent_size=4, max_length=18, kl_weight=0.01), spec)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    batch = {"x": ids[:, :-1], "y": ids[:, 1:], "mask": mask[:, 1:]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is ~50x faster than many on a shared machine
    try:
        for _ in range(80):
            opt.zero_grad()
            model(batch)["loss"].backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    path = model.interpolate(ids[0], mask[0], ids[1], mask[1], points=5)
    assert len(path) == 5
    ends = [phrase_grid(tok.to_grid(path[i]), 4) for i in (0, -1)]  # what the modality writes
    assert (ends[0] == grids[0]).mean() > 0.9 and (ends[1] == grids[1]).mean() > 0.9
    assert not (ends[0] == ends[1]).all()


# -- piano rolls for the image families ---------------------------------------------------
def test_roll_round_trip_gives_the_voices_back_by_pitch_order():
    from genforge.data.music_roll import PITCH_HIGH, ROWS, grid_to_roll, roll_to_grid

    g = np.array([[72, 67, 60, 48], [72, 67, 60, 48], [74, 65, 65, 50], [REST] * 4, [76, 71, 64, 52]])
    roll = grid_to_roll(g)
    assert roll.shape == (ROWS, 5) and roll.dtype == np.uint8
    assert roll[PITCH_HIGH - 72, 0] == 255 and roll[:, 3].sum() == 0
    assert (roll_to_grid(roll / 255.0) == g).all()  # the unison at step 2 comes back doubled
    crossed = np.array([[60, 67, 55, 48]])  # alto above soprano: decoded uncrossed
    assert roll_to_grid(grid_to_roll(crossed) / 255.0).tolist() == [[67, 60, 55, 48]]
    five = np.zeros((ROWS, 1))
    five[[PITCH_HIGH - p for p in (79, 72, 67, 60, 48)], 0] = [0.6, 0.9, 0.9, 0.9, 0.9]
    assert roll_to_grid(five).tolist() == [[72, 67, 60, 48]]  # the least confident of five is dropped
    with pytest.raises(ValueError, match="piano roll"):
        roll_to_grid(np.zeros((12, 4)))


@pytest.fixture()
def tiny_jsb(monkeypatch):
    """load_jsb answers a few synthetic chorales: jsb-roll builds its images from them."""
    import genforge.data.music as music

    grids = [chorale(64 + 8 * i, i) for i in range(10)]
    monkeypatch.setattr(music, "load_jsb", lambda path=None: {"train": grids[:6], "val": grids[6:8],
                                                              "test": grids[8:]})
    return grids


def test_jsb_roll_is_an_image_dataset_of_two_bar_rolls(tiny_jsb):
    from genforge.data import modality_of
    from genforge.data.images import load_images
    from genforge.data.music_roll import TRAIN_STRIDE, excerpts, grid_to_roll

    assert modality_of("jsb-roll") == "image"
    data = load_images(DataConfig(name="jsb-roll"))
    assert data.spec.shape == (1, 48, 32) and data.spec.class_names == ["major", "minor"]
    n_train = sum(len(excerpts(g, TRAIN_STRIDE)) for g in tiny_jsb[:8])
    assert len(data.train) + len(data.val) == n_train
    assert len(data.test) == sum(len(excerpts(g, 32)) for g in tiny_jsb[8:])
    first = grid_to_roll(tiny_jsb[8][:32])[None] / 255.0
    assert torch.allclose(data.test.images[0].float() / 255.0, torch.as_tensor(first, dtype=torch.float32))


def test_tiny_diffusion_on_rolls_samples_midi_with_no_family_change(tiny_jsb, tmp_path, capsys):
    from genforge.data.music_roll import main as roll_main

    run = tmp_path / "run"
    assert main(["train", "diffusion-jsb-roll", "--run-dir", str(run), "--no-progress", "model.channels=[8,8,8]",
                 "model.sampling_steps=2", "train.max_steps=2", "train.batch_size=4", "train.eval_every=2",
                 "train.eval_batches=1", "train.checkpoint_every=2", "train.plot=false", "train.device=cpu"]) == 0
    npz = tmp_path / "s.npz"
    assert main(["sample", str(run), "--num-samples", "2", "--out", str(npz), "--seed", "0"]) == 0
    out = tmp_path / "roll.mid"
    assert roll_main([str(npz), str(out)]) == 0
    for f in (tmp_path / "roll-1.mid", tmp_path / "roll-2.mid"):
        mido.MidiFile(f)
        assert len(read_midi_grid(f)) <= 32 and read_midi_grid(f).shape[1] == 4
    assert roll_main([str(npz), str(out)]) == 2  # never replaces a file
    assert roll_main([str(npz), str(tmp_path / "x.wav")]) == 2
    assert roll_main([str(npz), str(tmp_path / "y.mid"), "--threshold", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "rolls are written as .mid" in err and "--threshold" in err


def test_serve_refuses_a_seqvae_music_run_before_the_port_opens(vae_run):
    """The server draws music from GPT runs; a phrase VAE is named at start-up, never a 500 later."""
    pytest.importorskip("fastapi")
    from genforge.serve.engine import load_entries

    with pytest.raises(GenforgeError, match="serves music from GPT runs only"):
        load_entries([str(vae_run)])
