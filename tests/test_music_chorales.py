"""music21's Bach chorales with keys and fermatas: reading them, chorale tokens, a tiny gpt-bach."""

from __future__ import annotations

import numpy as np
import pytest

from genforge import GenforgeError
from genforge.cli import main
from genforge.data.music import grid_notes, grid_to_midi, read_midi

music21 = pytest.importorskip("music21")
pytest.importorskip("pretty_midi")

from music21 import corpus  # noqa: E402
from music21 import key as m21key  # noqa: E402

from genforge.data import music_chorales  # noqa: E402
from genforge.data.music_chorales import Chorale, chorale_key, parse_chorale, parse_key, to_c  # noqa: E402
from genforge.data.music_tokens import MusicTokenizer  # noqa: E402

# A few four-part chorales: enough for train/val/test splits at tiny size, parsed in about a second.
SMALL = ["bwv66.6", "bwv10.7", "bwv101.7", "bwv102.7", "bwv103.6", "bwv104.6", "bwv108.6", "bwv11.6"]


@pytest.fixture(scope="module")
def bwv66():
    return corpus.parse("bwv66.6")


def test_known_chorale_key_is_read_from_the_score(bwv66):
    chorale = parse_chorale(bwv66)
    assert (chorale.key, chorale.key_source) == ("F# minor", "score")


def test_signature_only_key_takes_its_mode_from_the_analysis(bwv66):
    score = bwv66.__deepcopy__()
    for part in score.parts:  # replace the stated key (F# minor) by its bare signature (3 sharps)
        for k in list(part.recurse().getElementsByClass(m21key.KeySignature)):
            k.activeSite.replace(k, m21key.KeySignature(3))
    assert chorale_key(score) == ("F# minor", "signature+analysis")  # not A major, the signature's other reading
    for part in score.parts:
        for k in list(part.recurse().getElementsByClass(m21key.KeySignature)):
            k.activeSite.remove(k)
    assert chorale_key(score) == ("F# minor", "analysis")


def test_fermatas_mark_the_phrase_ends(bwv66):
    chorale = parse_chorale(bwv66)
    f = chorale.fermata
    assert f.shape == (len(chorale.grid),) and f.sum() > 0
    starts = np.flatnonzero(f & ~np.r_[False, f[:-1]])
    ends = np.flatnonzero(f & ~np.r_[f[1:], False]) + 1
    # six phrases; the fermatas sit on the soprano notes at quarter offsets 3, 7, 11, 19, 27, 35
    assert starts.tolist() == [4 * q for q in (3, 7, 11, 19, 27, 35)]
    assert ends[-1] == len(chorale.grid)  # the last phrase ends the piece
    note_ends = {round(4 * float(n.offset + n.quarterLength)) for n in bwv66.parts[0].flatten().notes}
    assert set(ends.tolist()) <= note_ends  # a fermata lasts exactly its soprano note


@pytest.mark.parametrize("text, expected", [("D major", (2, "major")), ("f# minor", (6, "minor")),
                                            ("Bb minor", (10, "minor")), ("Eb", (3, "major"))])
def test_parse_key(text, expected):
    assert parse_key(text) == expected


@pytest.mark.parametrize("text", ["H major", "D dorian", "", "C## major x"])
def test_bad_key_is_a_one_line_error(text):
    with pytest.raises(GenforgeError, match="cannot read the key"):
        parse_key(text)


def test_chorale_tokens_round_trip_key_fermatas_and_every_note(bwv66, tmp_path):
    chorale = parse_chorale(bwv66)
    tok = MusicTokenizer("chorale")
    ids = tok.encode_grid(chorale.grid, fermata=chorale.fermata, key=chorale.key)
    assert len(ids) == 1 + 4 * len(chorale.grid) and tok.itos[ids[0]] == "key_F#_minor"
    assert {tok.itos[i] for i in ids[1::4]} & {"fhold", *(f"fp{p}" for p in range(128))}  # flags on the soprano
    assert not {tok.itos[i] for v in (2, 3, 4) for i in ids[v::4]} & {"fhold", *(f"fp{p}" for p in range(128))}
    grid, onsets = tok.decode_grid(ids)
    assert (grid == chorale.grid).all()
    assert (tok.fermatas(ids) == chorale.fermata).all() and tok.key_of(ids) == "F# minor"
    # tokens -> MIDI -> grid keeps every note (MIDI has no key token nor fermata: they are skipped)
    mid = grid_to_midi(grid, tmp_path / "c.mid", onsets=onsets)
    assert grid_notes(*read_midi(mid)) == grid_notes(grid, onsets)
    # the notes are the grid's, plus a soprano strike where a fermata ends inside a held pitch (the
    # grid has no articulation; a fermata ends its note): bwv66.6 repeats its pitch across one
    f, sop = chorale.fermata, chorale.grid[:, 0]
    restrikes = int((f[:-1] & ~f[1:] & (sop[1:] == sop[:-1]) & (sop[1:] >= 0)).sum())
    assert restrikes == 1 and len(grid_notes(grid, onsets)) == len(grid_notes(chorale.grid)) + restrikes


def test_transposing_chorale_tokens_moves_the_key_and_the_flagged_soprano(bwv66):
    chorale = parse_chorale(bwv66)
    tok = MusicTokenizer("chorale")
    ids = tok.encode_grid(chorale.grid, fermata=chorale.fermata, key=chorale.key)
    up = tok.transpose_ids(np.asarray(ids), 3)
    assert tok.key_of(up) == "A minor" and tok.key_of(tok.transpose_ids(np.asarray(ids), -7)) == "B minor"
    assert (tok.decode_grid(up)[0] == np.where(chorale.grid < 0, -1, chorale.grid + 3)).all()
    assert (tok.fermatas(up) == chorale.fermata).all()


def test_to_c_moves_minor_to_a_and_major_to_c():
    grid = np.array([[66, 61, 57, 42]] * 4)
    moved = to_c(Chorale(grid, "F# minor", "score", np.zeros(4, bool)))
    assert moved.key == "A minor" and (moved.grid == grid + 3).all()
    moved = to_c(Chorale(grid, "G major", "score", np.zeros(4, bool)))
    assert moved.key == "C major" and (moved.grid == grid + 5).all()  # the smaller move: up a fourth, not down 7


def test_grid_runs_refuse_keys_and_other_sources_refuse_chorale_tokens():
    with pytest.raises(GenforgeError, match="chorale tokens"):
        MusicTokenizer("grid").encode_grid(np.array([[60, 55, 52, 48]]), key="C major")
    with pytest.raises(GenforgeError, match="carry no key"):
        MusicTokenizer("grid").key_id("C major")


# -- a tiny gpt-bach end to end -------------------------------------------------------------
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=32", "train.max_steps=3",
        "train.batch_size=4", "train.eval_every=3", "train.eval_batches=1", "train.checkpoint_every=3",
        "train.warmup_steps=1", "train.plot=false", "train.device=cpu", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def small_bach():
    return SMALL, [parse_chorale(corpus.parse(n)) for n in SMALL], None


@pytest.fixture()
def bach(monkeypatch, small_bach):
    """data.name=bach reads these eight chorales, not all 433 (parsing those takes minutes)."""
    monkeypatch.setattr(music_chorales, "load_bach_chorales", lambda progress=True: small_bach)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_bach):
    mp = pytest.MonkeyPatch()
    mp.setattr(music_chorales, "load_bach_chorales", lambda progress=True: small_bach)
    root = tmp_path_factory.mktemp("bach")
    try:
        assert main(["train", "gpt-bach", "--run-dir", str(root / "keys"), "--no-progress", *TINY]) == 0
        assert main(["train", "gpt-bach", "--run-dir", str(root / "grid"), "--no-progress", "data.music_tokens=grid",
                     "data.transpose=0", *TINY]) == 0
        assert main(["train", "gpt-bach", "--run-dir", str(root / "c"), "--no-progress", "data.key_to_c=true",
                     "data.transpose=0", *TINY]) == 0
    finally:
        mp.undo()
    return root / "keys", root / "grid", root / "c"


def test_gpt_bach_samples_in_the_key_asked_for(runs, tmp_path, bach):
    import mido

    from genforge.modalities.music import prompt_ids
    from genforge.runs import load_run

    keys, *_ = runs
    run = load_run(keys)
    assert prompt_ids(run, None, "D major") == [run.tokenizer.bos_id, run.tokenizer.stoi["key_D_major"]]
    out = tmp_path / "d.mid"
    assert main(["sample", str(keys), "--key", "D major", "--steps", "8", "--seed", "0", "--out", str(out)]) == 0
    assert sum(m.type == "note_on" for t in mido.MidiFile(out).tracks for m in t) >= 0  # an independent reader parses it
    assert len(read_midi(out)[0]) <= 8


def test_key_is_refused_where_it_cannot_apply(runs, tmp_path, capsys, bach):
    keys, grid, _ = runs
    assert main(["sample", str(grid), "--key", "D major", "--out", str(tmp_path / "x.mid")]) == 2
    assert "carry no key" in capsys.readouterr().err
    assert main(["sample", str(keys), "--key", "H major", "--out", str(tmp_path / "x.mid")]) == 2
    assert "cannot read the key" in capsys.readouterr().err
    melody = grid_to_midi(np.array([[67, -1, -1, -1]] * 8), tmp_path / "m.mid")
    assert main(["sample", str(keys), "--melody", str(melody), "--out", str(tmp_path / "x.mid")]) == 2
    assert "give --key" in capsys.readouterr().err
    assert not (tmp_path / "x.mid").exists()
    assert main(["train", "gpt-bach", "--run-dir", str(tmp_path / "r"), "--no-progress", "data.name=jsb",
                 *TINY]) == 2
    assert "need data.name=bach" in capsys.readouterr().err


def test_gpt_bach_melody_with_a_key_keeps_the_soprano(runs, tmp_path, bach):
    keys, *_ = runs
    soprano = [67, 67, 69, 69, 71, 71, 71, 71]
    melody = grid_to_midi(np.array([[p, -1, -1, -1] for p in soprano]), tmp_path / "m.mid")
    out = tmp_path / "h.mid"
    assert main(["sample", str(keys), "--melody", str(melody), "--key", "G major", "--seed", "0",
                 "--out", str(out)]) == 0
    assert read_midi(out)[0][:, 0].tolist() == soprano


def test_eval_leaves_the_key_token_out_of_the_note_count(runs, bach):
    from genforge.data.music_splits import load_music
    from genforge.evaluate import evaluate_run
    from genforge.runs import load_run

    keys, *_ = runs
    run = load_run(keys)
    report = evaluate_run(run, num_samples=2)
    data = load_music(run.config.data, run.model_config.block_size)
    grid_tokens = 4 * sum(len(g) for g in data.pieces["val"])
    assert report["notes_val"] == grid_tokens  # every grid token once; keys and <eos> are not notes
    assert np.isfinite(report["nll_per_note_val"])


def test_key_to_c_trains_in_c_major_and_a_minor_and_samples_moved_to_the_key_asked(runs, tmp_path, bach):
    from genforge.data.music_splits import load_music
    from genforge.modalities.music import home_shift, prompt_ids
    from genforge.runs import load_run

    *_, c = runs
    run = load_run(c)
    tok = run.tokenizer
    data = load_music(run.config.data, run.model_config.block_size)
    keys = {tok.key_of(data.train.seqs[i]) for i in range(len(data.train.seqs))}
    assert keys <= {"C major", "A minor"} and len(keys) == 2  # the eight chorales hold both modes
    assert home_shift(run, "D major") == 2 and home_shift(run, "F# minor") == -3
    assert prompt_ids(run, None, "D major") == [tok.bos_id, tok.stoi["key_C_major"]]  # the key it knows
    # a D major melody is harmonized in C and moved back: the soprano comes out as given
    soprano = [74, 74, 76, 76, 78, 78, 74, 74]
    melody = grid_to_midi(np.array([[p, -1, -1, -1] for p in soprano]), tmp_path / "m.mid")
    out = tmp_path / "d.mid"
    assert main(["sample", str(c), "--melody", str(melody), "--key", "D major", "--seed", "0", "--out", str(out)]) == 0
    assert read_midi(out)[0][:, 0].tolist() == soprano


def test_rewards_and_filters_read_chorale_token_text(bwv66):
    from genforge.rl.music_rewards import sample_grid

    chorale = parse_chorale(bwv66)
    tok = MusicTokenizer("chorale")
    text = tok.decode(tok.encode_grid(chorale.grid, fermata=chorale.fermata, key=chorale.key))
    assert text.startswith("key_F#_minor ") and " fp" in text
    assert (sample_grid(text) == chorale.grid).all()


def test_musicxml_of_chorale_tokens_keeps_the_fermatas(bwv66, tmp_path):
    from genforge.data.music_render import musicxml

    chorale = parse_chorale(bwv66)
    tok = MusicTokenizer("chorale")
    ids = tok.encode_grid(chorale.grid, fermata=chorale.fermata, key=chorale.key)
    path = musicxml(tok.to_grid(ids), tmp_path / "c.musicxml", tok.decode_grid(ids)[1], tok.fermatas(ids))
    back = parse_chorale(music21.converter.parse(str(path)))

    def stretches(f):
        return np.flatnonzero(f & ~np.r_[False, f[:-1]]), np.flatnonzero(f & ~np.r_[f[1:], False]) + 1

    # the same six phrase ends, step for step (a fermata ends its note, so a repeated pitch after it
    # is struck again, not merged); a stretch may start later: the score is barred in 4/4 from step
    # 0 (bwv66.6 has a pickup), and music21 marks the last of the tied notes a barline splits
    (s0, e0), (s1, e1) = stretches(chorale.fermata), stretches(back.fermata)
    assert (e1 == e0).all() and (s1 >= s0).all() and (s1 < e0).all()
    assert (back.grid == chorale.grid).all()  # every voice in time order (notes were once written by pitch)


def test_musicxml_carries_the_tempo_of_the_midi(bwv66, tmp_path):
    """--tempo reached MIDI and WAV but not the score: a notation program played every MusicXML at
    its own default. The metronome mark now sits over the soprano."""
    from music21 import tempo

    from genforge.data.music_render import musicxml

    chorale = parse_chorale(bwv66)
    marks = {}
    for bpm in (None, 72.0):
        path = musicxml(chorale.grid[:64], tmp_path / f"{bpm}.musicxml", tempo=bpm)
        score = music21.converter.parse(str(path))
        marks[bpm] = [m.number for m in score.recurse().getElementsByClass(tempo.MetronomeMark)]
    assert marks == {None: [], 72.0: [72]}
