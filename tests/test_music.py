"""Music: tokenizer round trips, MIDI I/O, loader reports, windows, and a tiny GPT end to end."""

from __future__ import annotations

import json

import mido  # the independent MIDI reader (genforge reads and writes with pretty_midi)
import numpy as np
import pytest
import torch

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import DataConfig
from genforge.data import modality_of
from genforge.data.music import (
    REST,
    allowed_shifts,
    grid_notes,
    grid_to_midi,
    load_midi_folder,
    notes_to_midi,
    read_midi,
    read_midi_grid,
    read_midi_notes,
    voice_ranges,
)
from genforge.data.music_splits import WindowSplit, load_music
from genforge.data.music_tokens import MusicTokenizer
from genforge.data.tokenizers import load_tokenizer

pytest.importorskip("pretty_midi")


def chorale(T: int, seed: int) -> np.ndarray:
    """A JSB-shaped (T, 4) grid: notes of 1-8 16ths per voice in SATB ranges, some rests."""
    rng = np.random.default_rng(seed)
    grid = np.full((T, 4), REST, dtype=np.int64)
    for v, (lo, hi) in enumerate([(60, 79), (53, 72), (48, 67), (36, 60)]):
        t = 0
        while t < T:
            d = int(rng.integers(1, 9))
            grid[t:t + d, v] = REST if rng.random() < 0.1 else int(rng.integers(lo, hi))
            t += d
    return grid


def jsb_json(path, n_train=6, n_valid=2, n_test=2, T=48) -> str:
    grids = [chorale(T + 4 * i, i).tolist() for i in range(n_train + n_valid + n_test)]
    path.write_text(json.dumps({"train": grids[:n_train], "valid": grids[n_train:n_train + n_valid],
                                "test": grids[n_train + n_valid:]}))
    return str(path)


def mido_notes(path) -> int:
    return sum(1 for track in mido.MidiFile(path).tracks for m in track if m.type == "note_on" and m.velocity > 0)


# -- tokenizers and MIDI ------------------------------------------------------------------
def test_grid_tokens_round_trip_with_holds_rests_and_restrikes():
    tok = MusicTokenizer("grid")
    grid = chorale(64, 0)
    ids = tok.encode_grid(grid)
    assert len(ids) == 4 * 64 and tok.itos[ids[0]].startswith("p")  # soprano of step 0 first
    back, onsets = tok.decode_grid(ids)
    assert (back == grid).all() and grid_notes(back, onsets) == grid_notes(grid)
    struck = np.zeros((8, 4), dtype=bool)
    struck[::2] = True  # the same pitch struck every 2 steps: four notes, not one
    same = np.full((8, 4), 60)
    back, onsets = tok.decode_grid(tok.encode_grid(same, struck))
    assert (back == same).all() and len(grid_notes(back, onsets)) == 16


def test_grid_midi_round_trip_keeps_every_note(tmp_path):
    grid = chorale(80, 1)
    path = grid_to_midi(grid, tmp_path / "c.mid")
    assert (read_midi_grid(path) == grid[: len(read_midi_grid(path))]).all()
    assert mido_notes(path) == len(grid_notes(grid))
    tok = MusicTokenizer("grid")  # MIDI -> tokens -> MIDI
    again = notes_to_midi(tok.to_notes(tok.encode_grid(*read_midi(path))), tmp_path / "d.mid", parts=list("SATB"))
    assert read_midi_notes(again)[0] == read_midi_notes(path)[0]


def test_every_tempo_genforge_writes_reads_back_and_others_are_refused(tmp_path):
    """MIDI stores microseconds per quarter in 24 bits: 2 bpm was a mido traceback and 1e9 bpm
    rounded to 0, a file no reader could load (pretty_midi divided by zero)."""
    from genforge.data.music import TEMPO_RANGE

    grid = chorale(16, 2)
    for bpm in TEMPO_RANGE:
        path = grid_to_midi(grid, tmp_path / f"{bpm:g}.mid", tempo_bpm=bpm)
        assert (read_midi_grid(path) == grid[: len(read_midi_grid(path))]).all()
    for bpm in (0.0, 2.0, 1e9, float("nan")):
        with pytest.raises(GenforgeError, match="between 4 and 1000 quarter notes per minute"):
            grid_to_midi(grid, tmp_path / "x.mid", tempo_bpm=bpm)
    assert not (tmp_path / "x.mid").exists()


def test_event_tokens_round_trip_any_midi(tmp_path):
    rng = np.random.default_rng(3)
    notes = []
    for part in range(3):  # three instruments, chords, notes across bar lines, empty bars
        for k in range(20):
            start = int(rng.integers(0, 120))
            notes.append((part, 40 + 12 * part + k % 11, start, start + int(rng.integers(1, 40))))
    # one MIDI channel cannot tell two overlapping notes of one pitch apart: keep the first
    kept: list = []
    for n in sorted(notes, key=lambda n: n[2]):
        if all(m[1] != n[1] or m[3] <= n[2] for m in kept):
            kept.append(n)
    notes = kept
    path = notes_to_midi(notes, tmp_path / "e.mid")
    read, n_parts = read_midi_notes(path)
    assert n_parts == 3 and mido_notes(path) == len(notes)
    tok = MusicTokenizer("events")
    ids = tok.encode_notes(read)
    assert {tok.itos[i] for i in ids} >= {"bar", "pos0"}
    out = notes_to_midi(tok.decode_notes(ids), tmp_path / "f.mid")
    key = lambda ns: sorted((p, s, e) for _, p, s, e in ns)  # noqa: E731 - parts merge into one
    assert key(read_midi_notes(out)[0]) == key(notes)


def test_tokenizer_is_saved_with_the_run(tmp_path):
    for kind in ("grid", "events"):
        MusicTokenizer(kind).save(tmp_path / "tokenizer.json")
        assert load_tokenizer(tmp_path / "tokenizer.json").itos == MusicTokenizer(kind).itos
    with pytest.raises(GenforgeError, match="not a grid music token"):
        MusicTokenizer("grid").encode("p60 bar")


# -- loaders ---------------------------------------------------------------------------------
def test_midi_folder_counts_and_reports_bad_files(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    grid_to_midi(chorale(32, 0), folder / "good.mid")
    (folder / "broken.mid").write_bytes(b"MThd not really a MIDI file")
    silent = mido.MidiFile()
    silent.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000)]))
    silent.save(folder / "silent.mid")  # valid, no notes
    names, pieces, report = load_midi_folder(folder)
    assert names == ["good.mid"] and len(pieces) == 1
    assert report.counts == {"unreadable MIDI files": 1, "files with no notes": 1}
    text = report.text(str(folder), 1)
    assert "broken.mid" in text and "silent.mid" in text and "kept 1" in text
    assert modality_of(str(folder)) == "music"
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(GenforgeError, match="no .mid"):
        load_midi_folder(empty)


def test_an_empty_midi_file_is_named_as_empty(tmp_path):
    """A 0-byte .mid (what --prompt-midi, --melody and metrics music read) once gave
    'cannot read MIDI file x.mid: EOFError: ', with nothing after the colon."""
    (tmp_path / "x.mid").write_bytes(b"")
    with pytest.raises(GenforgeError, match=r"x\.mid: the file is empty; give a standard MIDI file \(\.mid\)$"):
        read_midi(tmp_path / "x.mid")


def test_a_midi_folder_loads_as_events_with_the_long_pieces_reported(tmp_path, capsys):
    folder = tmp_path / "midi"
    folder.mkdir()
    for i in range(5):
        grid_to_midi(chorale(40 + 40 * i, i), folder / f"{i}.mid")
    (folder / "bad.midi").write_bytes(b"junk")
    data = load_music(DataConfig(name=str(folder), music_tokens="events"), block_size=64)
    err = capsys.readouterr().err
    assert "unreadable MIDI files: 1 (e.g. bad.midi)" in err and "longer than the context of 64" in err
    assert data.tokenizer.kind == "events" and len(data.train) > 0 and data.test is not None


def test_a_long_opening_on_an_events_run_is_measured_in_tokens(tmp_path, capsys):
    """An events run's too-long --prompt-midi asked for "at most 15 16th steps", a grid-run
    unit that event tokens (bar, position, pitch, duration) do not have."""
    folder = tmp_path / "midi"
    folder.mkdir()
    for i in range(5):
        grid_to_midi(chorale(40 + 40 * i, i), folder / f"{i}.mid")
    run = tmp_path / "run"
    assert main(["train", "gpt-jsb", f"data.name={folder}", "data.music_tokens=events", "data.transpose=0",
                 *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    opening = grid_to_midi(chorale(64, 9), tmp_path / "long.mid")
    assert main(["sample", str(run), "--prompt-midi", str(opening), "--out", str(tmp_path / "x.mid")]) == 2
    err = capsys.readouterr().err.strip()
    assert "give an opening of at most 30 event tokens" in err and "16th" not in err


def test_chorales_refuse_event_tokens(tmp_path):
    with pytest.raises(GenforgeError, match="music_tokens=grid"):
        load_music(DataConfig(name="jsb", music_tokens="events"), block_size=64)


def test_held_out_windows_score_every_token_once_with_the_voice_phase_fixed(tmp_path):
    tok = MusicTokenizer("grid")
    seqs = [np.asarray([tok.bos_id, *tok.encode_grid(chorale(T, T)), tok.eos_id]) for T in (10, 40, 97)]
    split = WindowSplit(seqs, 32, tok.pad_id, tok, scored_once=True)
    batch = split.get(torch.arange(len(split)))
    assert int(batch["mask"].sum()) == sum(len(s) - 1 for s in seqs)  # every target exactly once
    for _, o, _, _ in split.items:
        assert o % 4 == 0  # position 1 of every window is a soprano token (or <bos> at 0)
    train = WindowSplit(seqs, 32, tok.pad_id, tok, scored_once=False)
    assert int(train.get(torch.arange(len(train)))["mask"].sum()) > int(batch["mask"].sum())  # overlaps


def test_transposition_keeps_every_voice_in_its_range(tmp_path):
    grids = [chorale(32, i) for i in range(4)]
    ranges = voice_ranges(grids)
    for g in grids:
        shifts = allowed_shifts(g, ranges, 5)
        assert 0 in shifts
        for k in shifts:
            moved = np.where(g == REST, REST, g + k)
            for v in range(4):
                sung = moved[:, v][moved[:, v] != REST]
                assert sung.min() >= ranges[v, 0] and sung.max() <= ranges[v, 1]
    # pieces sung a fifth apart widen the voices' ranges, so the others can move inside them
    train = [np.where(g == REST, REST, g + k).tolist() for g, k in zip(grids, (-7, 7, 0, 0), strict=True)]
    path = tmp_path / "j.json"
    path.write_text(json.dumps({"train": train, "valid": train[2:3], "test": train[3:]}))
    plain = load_music(DataConfig(name=str(path)), 32)
    more = load_music(DataConfig(name=str(path), transpose=3), 32)
    assert len(more.train) > len(plain.train) and len(more.val) == len(plain.val)


def test_jsb_offline_error_names_the_data_path(tmp_path, monkeypatch):
    monkeypatch.delenv("GENFORGE_DATA", raising=False)
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    import genforge.data.locate as locate

    def offline(url, out, relative):
        raise locate._offline_error(url, OSError("no network"), relative)

    monkeypatch.setattr(locate, "_copy_url", offline)
    with pytest.raises(GenforgeError, match=r"GENFORGE_DATA/jsb-chorales/Jsb16thSeparated.json"):
        load_music(DataConfig(name="jsb"), 64)


# -- a tiny GPT end to end ---------------------------------------------------------------------
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=32", "train.max_steps=4",
        "train.batch_size=4", "train.eval_every=2", "train.eval_batches=1", "train.checkpoint_every=2",
        "train.warmup_steps=1", "train.plot=false", "train.device=cpu"]


@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("music")
    data = jsb_json(tmp / "tiny.json")
    run = tmp / "run"
    assert main(["train", "gpt-jsb", "--run-dir", str(run), "--no-progress", f"data.name={data}", *TINY]) == 0
    return run


def test_tiny_gpt_samples_midi_an_independent_reader_parses(music_run, tmp_path, capsys):
    assert any(p.suffix == ".mid" for p in (music_run / "samples").iterdir())  # previews are MIDI
    out = tmp_path / "piece.mid"
    assert main(["sample", str(music_run), "--out", str(out), "--seed", "0", "--steps", "6"]) == 0
    assert mido_notes(out) > 0 and mido.MidiFile(out).length > 0
    assert len(read_midi_grid(out)) <= 6 + 1
    opening = grid_to_midi(chorale(3, 9), tmp_path / "open.mid")
    cont = tmp_path / "cont.mid"
    assert main(["sample", str(music_run), "--out", str(cont), "--prompt-midi", str(opening), "--steps", "2",
                 "--seed", "0"]) == 0
    assert (read_midi_grid(cont)[:3] == chorale(3, 9)).all()  # the opening is kept, then continued
    png = tmp_path / "roll.png"
    assert main(["sample", str(music_run), "--out", str(png), "--seed", "0"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_token_run_without_its_tokenizer_is_one_line(music_run, tmp_path, capsys):
    """sample/eval on a token run whose tokenizer.json is gone crashed with an AttributeError."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(music_run, run)
    (run / "tokenizer.json").unlink()
    for argv in (["sample", str(run), "--steps", "2", "--out", str(tmp_path / "x.mid")], ["eval", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "has no tokenizer.json" in err and "\n" not in err and "Traceback" not in err


def test_numbered_outputs_are_checked_before_sampling(music_run, tmp_path, capsys, monkeypatch):
    """Running `sample --num-samples 3 --out x.mid` a second time drew every piece, then refused
    x-1.mid: the sampling time was lost. Now the numbered names are checked first."""
    from genforge.modalities.music import MusicModality

    (tmp_path / "x-2.mid").write_bytes(b"mine")

    def never(*args, **kwargs):
        raise AssertionError("sampled before the outputs were checked")

    monkeypatch.setattr(MusicModality, "_continue", never)
    assert main(["sample", str(music_run), "--num-samples", "3", "--out", str(tmp_path / "x.mid")]) == 2
    assert "x-2.mid already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-2.mid"] and (tmp_path / "x-2.mid").read_bytes() == b"mine"


def test_every_written_piece_carries_its_provenance(music_run, tmp_path, capsys):
    """MIDI gets a sidecar, the piano roll its PNG chunk; `genforge verify` checks both, and a
    changed MIDI byte is caught."""
    mid, png = tmp_path / "p.mid", tmp_path / "p.png"
    for out in (mid, png):
        assert main(["sample", str(music_run), "--out", str(out), "--seed", "3", "--steps", "4"]) == 0
    assert (tmp_path / "p.mid.provenance.json").is_file() and not (tmp_path / "p.png.provenance.json").exists()
    capsys.readouterr()
    assert main(["verify", str(mid), str(png)]) == 0
    record = json.loads((tmp_path / "p.mid.provenance.json").read_text())
    assert record["seed"] == 3 and record["options"]["steps"] == 4
    data = bytearray(mid.read_bytes())
    data[-2] ^= 0xFF
    mid.write_bytes(bytes(data))
    assert main(["verify", str(mid)]) == 1


def test_sample_refuses_what_the_gpt_cannot_do(music_run, tmp_path, capsys):
    melody = grid_to_midi(chorale(8, 1), tmp_path / "m.mid")
    assert main(["sample", str(music_run), "--out", str(tmp_path / "x.mid"), "--melody", str(melody),
                 "--steps", "2"]) == 2  # the melody sets the length (harmonizing: tests/test_music_melody.py)
    assert "drop --prompt-midi and --steps" in capsys.readouterr().err
    assert main(["sample", str(music_run), "--out", str(tmp_path / "x.txt")]) == 2
    assert "music is written as" in capsys.readouterr().err
    assert main(["sample", str(music_run), "--out", str(melody)]) == 2  # never replaces a file
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "x.mid").exists()


def test_eval_reports_note_wise_nll_equal_to_a_direct_computation(music_run, capsys):
    from genforge.evaluate import evaluate_run
    from genforge.modalities.music import note_nll
    from genforge.runs import load_run

    report = evaluate_run(load_run(music_run), num_samples=2)
    assert report["notes_val"] > 0 and report["notes_test"] > 0
    assert 0 < report["nll_per_note_val"] < np.log(MusicTokenizer("grid").vocab_size) + 1
    # the same number from a whole-sequence pass where a piece fits one context
    run = load_run(music_run)
    tok = run.tokenizer
    seq = [tok.bos_id, *tok.encode_grid(chorale(6, 5)), tok.eos_id]  # 26 tokens <= 33
    split = WindowSplit([np.asarray(seq)], 32, tok.pad_id, tok, scored_once=True)
    nll, count = note_nll(run.model, split, tok.eos_id, 4, None)
    with torch.no_grad():
        logp = run.model.token_logprobs(torch.tensor([seq]))[0, :-1]  # <eos> is not a note
    assert count == 24 and abs(nll - float(-logp.mean())) < 1e-5
