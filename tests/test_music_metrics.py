"""Music metrics and rewards on hand-made four-voice grids, plus a few real Bach chorales."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genforge import GenforgeError
from genforge.metrics.music import (
    CopyIndex,
    Key,
    cadence_score,
    estimate_key,
    js_divergence,
    key_consistency,
    melodic_intervals,
    music_metrics,
    parallels,
    range_violations,
    read_grid_files,
    read_grids,
    reference_from_splits,
    voice_notes,
)
from genforge.metrics.music.melody import durations
from genforge.metrics.music.memorization import row_ids, window_hashes
from genforge.rl import music_rewards
from genforge.rl.rewards import BUILTINS, builtin_names

R = -1


def chords(*rows, hold: int = 4) -> np.ndarray:
    """Each (s, a, t, b) chord held for ``hold`` 16ths: a (len(rows) * hold, 4) grid."""
    return np.repeat(np.array(rows, dtype=np.int64), hold, axis=0)


# C major I - V - I, textbook voicing with no parallels (all in SATB range)
CLEAN = chords((72, 67, 64, 48), (71, 67, 62, 43), (72, 67, 64, 48))
# C major -> D minor: bass C3 -> D3 and tenor G3 -> A3 rise a step a fifth apart, exactly one
# parallel fifth; the soprano falls (C5 -> A4), so no other pair moves in parallel.
ONE_FIFTH = chords((72, 64, 55, 48), (69, 65, 57, 50))


# --------------------------------------------------------------------------- notes


def test_notes_start_at_pitch_changes_and_after_rests():
    n = voice_notes(np.array([R, 60, 60, 62, R, 62, 62, 64]))
    assert n.onset.tolist() == [1, 3, 5, 7]
    assert n.duration.tolist() == [2, 1, 2, 1]
    assert n.pitch.tolist() == [60, 62, 62, 64]
    assert voice_notes(np.array([R, R])).onset.size == 0


def test_intervals_do_not_cross_rests_and_durations_count_16ths():
    grid = np.full((8, 4), R)
    grid[:, 0] = [60, 60, 64, R, 67, 65, 65, 65]
    assert melodic_intervals(grid).tolist() == [4, -2]  # 60->64, then 67->65 (rest breaks 64->67)
    assert sorted(durations(grid).tolist()) == [1, 1, 2, 3]


# --------------------------------------------------------------------------- parallels


def test_known_parallel_fifth_is_counted_exactly_once():
    p = parallels(ONE_FIFTH)
    assert (p.fifths, p.octaves) == (1, 0)
    assert p.transitions == 6  # one chord change, every pair has a moving voice
    # soprano and bass are a twelfth + octave apart (C5/C3 -> D5/D3): parallel octaves
    assert parallels(chords((72, 64, 55, 48), (74, 64, 55, 50))).octaves == 1


def test_no_parallels_in_clean_progression_nor_in_contrary_or_oblique_fifths():
    assert parallels(CLEAN)[:2] == (0, 0)
    contrary = chords((67, 64, 60, 48), (62, 64, 60, 55))   # S/B: P12 -> P5 by contrary motion
    oblique = chords((67, 64, 60, 48), (67, 64, 62, 48))    # S/B fifth held, tenor moves
    fifth_to_octave = chords((67, 64, 60, 48), (72, 64, 60, 48 + 12 - 12))  # S/B P12 -> P15
    for grid in (contrary, oblique, fifth_to_octave):
        assert parallels(grid).fifths == 0
    assert parallels(oblique).transitions == 3  # only pairs with the tenor move


def test_rests_break_voice_pair_transitions():
    grid = ONE_FIFTH.copy()
    grid[3, 3] = R  # the bass rests right before the move: no transition for its pairs
    p = parallels(grid)
    assert p.fifths == 0 and p.transitions == 3


# --------------------------------------------------------------------------- key, ranges, cadence


def test_scale_in_one_key_is_fully_consistent():
    c_major = np.full((32, 4), R)
    c_major[:, 0] = np.repeat([60, 62, 64, 65, 67, 69, 71, 72], 4)
    assert estimate_key(c_major) == Key(0, "major")
    assert key_consistency(c_major) == (8, 8)
    g_major = np.where(c_major == 65, 66, c_major)  # F -> F#: the G major collection
    assert key_consistency(g_major, Key(0, "major")) == (7, 8)


def test_voice_out_of_range_is_counted_per_note():
    grid = CLEAN.copy()
    grid[:4, 0] = 84       # one soprano note at C6, above G5
    grid[4:8, 3] = 36      # one bass note at C2, below E2
    assert range_violations(grid) == (2, 10)  # S 84 71 72, A 67 (held), T 64 62 64, B 48 36 48
    assert range_violations(CLEAN)[0] == 0


def test_cadence_scores_root_position_tonic_ending():
    assert cadence_score(CLEAN) == 1.0
    on_dominant = chords((72, 67, 64, 48), (71, 67, 62, 43))
    assert cadence_score(on_dominant, Key(0, "major")) == 0.0
    inverted = chords((72, 67, 64, 48), (72, 67, 60, 52))  # tonic triad, bass on E
    assert cadence_score(inverted, Key(0, "major")) == 0.5
    assert cadence_score(np.full((4, 4), R)) == 0.0


def test_js_divergence_bounds():
    assert js_divergence(np.array([1, 2, 3.0]), np.array([2, 4, 6.0])) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(np.array([1, 0.0]), np.array([0, 1.0])) == pytest.approx(1.0)


def test_silent_pieces_get_no_distance_to_bach():
    """An all-rest piece has nothing to compare: its three JS distances once came out as
    0.11 / 0.38 / 0.45 bits (a flat stand-in histogram against Bach's), now NaN ('-')."""
    from genforge.metrics.music import music_metrics

    assert np.isnan(js_divergence(np.zeros(12), np.arange(12.0)))
    out = music_metrics([np.full((16, 4), R)], against=[CLEAN])
    assert out["notes"] == 0
    assert all(np.isnan(out[k]) for k in ("pitch_class_js", "interval_js", "duration_js"))
    assert music_metrics([CLEAN], against=[CLEAN])["pitch_class_js"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- memorization


def test_planted_copy_is_found_with_its_exact_length():
    rng = np.random.default_rng(0)
    train = [rng.integers(40, 80, size=(n, 4)) for n in (50, 120, 80)]
    noise = np.full((9, 4), 1)  # pitch 1 never occurs in training
    planted = np.concatenate([noise, train[1][30:67], noise])
    copy = CopyIndex(train).longest_copy(planted)
    assert (copy.steps, copy.train_index, copy.train_start, copy.start) == (37, 1, 30, 9)
    assert CopyIndex(train).longest_copy(noise).steps == 0


def test_longest_copy_matches_brute_force():
    rng = np.random.default_rng(1)
    alphabet = np.array([[60, 55, 52, 48], [62, 57, 53, 50], [64, 59, 55, 52]])
    train = [alphabet[rng.integers(0, 3, size=n)] for n in (30, 17, 5)]
    index = CopyIndex(train)
    for _ in range(20):
        piece = alphabet[rng.integers(0, 3, size=rng.integers(1, 25))]
        best = max(k for k in range(len(piece) + 1) if k == 0 or any(
            any(np.array_equal(piece[i:i + k], t[j:j + k]) for t in train for j in range(len(t) - k + 1))
            for i in range(len(piece) - k + 1)))
        assert index.longest_copy(piece).steps == best


def test_window_hashes_agree_with_rehashing_each_window():
    ids = row_ids(np.random.default_rng(2).integers(-1, 128, size=(40, 4)))
    for length in (1, 5, 40):
        rolled = window_hashes(ids, length)
        assert all(rolled[i] == window_hashes(ids[i:i + length], length)[0] for i in range(len(rolled)))
    assert window_hashes(ids, 41).size == 0


# --------------------------------------------------------------------------- table and real Bach


def test_table_against_itself_has_zero_distances_and_full_copies():
    ref = reference_from_splits("toy", {"train": [CLEAN, ONE_FIFTH], "val": [CLEAN], "test": [CLEAN]})
    row = ref.score([CLEAN])
    assert row["pitch_class_js"] == pytest.approx(0.0, abs=1e-12)
    assert row["copy_steps_max"] == len(CLEAN)
    assert row["parallel_fifth_rate"] == 0.0 and row["cadence"] == 1.0
    fifths = music_metrics([ONE_FIFTH])
    assert fifths["parallel_fifth_rate"] == pytest.approx(1 / 6)
    assert "copy_steps_max" not in fifths and "pitch_class_js" not in fifths


def test_real_bach_has_near_zero_parallels_and_range_violations():
    corpus = pytest.importorskip("music21.corpus")
    from genforge.data.music import score_to_grid

    paths = sorted(corpus.getComposer("bach"))[:8]
    grids = [g for g in (score_to_grid(corpus.parse(str(p))) for p in paths) if g is not None]
    assert len(grids) >= 6
    row = music_metrics(grids)
    # measured on these chorales (music21 10.x): 0 parallels in 2803 transitions, 2 of 1439
    # notes out of range; bounds leave room for a different music21 reading of the scores
    assert row["parallel_fifth_rate"] + row["parallel_octave_rate"] <= 0.002
    assert row["range_violation_rate"] <= 0.005
    assert row["key_consistency"] >= 0.9


# --------------------------------------------------------------------------- files and CLI


def test_read_grids_from_npy_json_and_midi(tmp_path):
    np.save(tmp_path / "one.npy", CLEAN)
    np.save(tmp_path / "two.npy", np.stack([CLEAN, CLEAN]))
    (tmp_path / "a.json").write_text(json.dumps(CLEAN.tolist()))
    (tmp_path / "b.json").write_text(json.dumps([CLEAN.tolist(), ONE_FIFTH.tolist()]))
    grids, labels = read_grid_files([tmp_path / n for n in ("one.npy", "two.npy", "a.json", "b.json")])
    assert len(grids) == 6 and labels[1].endswith("two.npy#1")
    assert all(np.array_equal(g, CLEAN) for g in grids[:5])
    from genforge.data.music import grid_to_midi

    grid_to_midi(CLEAN, tmp_path / "c.mid")
    assert np.array_equal(read_grids(tmp_path / "c.mid")[0], CLEAN)


@pytest.mark.parametrize("name,content,message", [
    ("bad.npy", None, "not a readable .npy"),
    ("bad.json", "[[60, 55, 52]]", "shape (T, 4)"),
    ("bad.json", "[[60, 55, 52, 200]]", "0..127"),
    ("bad.txt", "x", "music metrics read"),
])
def test_bad_grid_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(b"garbage") if content is None else path.write_text(content)
    with pytest.raises(GenforgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_grids(path)


@pytest.fixture
def tiny_jsb(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "jsb-chorales").mkdir(parents=True)
    splits = {"train": [CLEAN.tolist(), ONE_FIFTH.tolist()], "valid": [CLEAN.tolist()], "test": [CLEAN.tolist()]}
    (root / "jsb-chorales" / "Jsb16thSeparated.json").write_text(json.dumps(splits))
    monkeypatch.setenv("GENFORGE_DATA", str(root))
    return root


def test_cli_prints_both_rows_and_writes_json(tiny_jsb, tmp_path, capsys):
    from genforge.cli import main

    np.save(tmp_path / "s.npy", ONE_FIFTH)
    assert main(["metrics", "music", str(tmp_path / "s.npy"), "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "real Bach (jsb)" in out and "parallel_fifth_rate" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["samples"]["parallel_fifth_rate"] == pytest.approx(1 / 6)
    assert saved["reference"]["parallel_fifth_rate"] == 0.0
    assert saved["samples"]["copy_steps_max"] == len(ONE_FIFTH)  # it is a training piece


@pytest.mark.parametrize("args,message", [
    ([], "name at least one file"),
    (["missing.mid"], "no such file"),
    (["s.npy", "--against", "mozart"], "unknown music reference 'mozart'"),
    (["drums.mid"], "drums.mid holds no notes (drum tracks are not read)"),  # was "got (0, 4)"
])
def test_cli_errors_exit_2_with_one_line(tiny_jsb, tmp_path, monkeypatch, capsys, args, message):
    from genforge.cli import main

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "s.npy", CLEAN)
    if "drums.mid" in args:  # a drum kit only: no pitched note to measure
        pretty_midi = pytest.importorskip("pretty_midi")
        drums = pretty_midi.PrettyMIDI()
        drums.instruments.append(pretty_midi.Instrument(0, is_drum=True))
        drums.instruments[0].notes.append(pretty_midi.Note(velocity=90, pitch=36, start=0.0, end=0.25))
        drums.write(str(tmp_path / "drums.mid"))
    assert main(["metrics", "music", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- rewards


def test_music_rewards_are_registered_builtins():
    assert set(builtin_names("music")) == {"no_parallels", "in_key", "voice_ranges", "cadence"}
    assert BUILTINS["cadence"][1] is music_rewards.cadence


def test_music_rewards_score_in_unit_interval_and_punish_silence():
    silent = np.full((8, 4), R)
    wild = CLEAN.copy()
    wild[:, 0] = 100  # soprano far out of range on every note
    samples = [CLEAN, ONE_FIFTH, silent, wild, np.zeros((0, 4))]
    scores = {name: fn(samples) for name, fn in (("p", music_rewards.no_parallels), ("k", music_rewards.in_key),
                                                 ("v", music_rewards.voice_ranges), ("c", music_rewards.cadence))}
    for values in scores.values():
        assert len(values) == len(samples) and all(0.0 <= v <= 1.0 for v in values)
        assert values[2] == values[4] == 0.0  # silence and an empty sample earn nothing
    assert scores["p"][:2] == [1.0, pytest.approx(5 / 6)]
    assert scores["v"][0] == 1.0 and scores["v"][3] == pytest.approx(1 - 1 / 8)  # 1 held S note of 8
    assert scores["c"][0] == 1.0 and scores["k"][0] == 1.0


def test_music_rewards_read_token_text_like_grids():
    from genforge.data.music_tokens import MusicTokenizer

    tok = MusicTokenizer("grid")
    text = tok.decode(tok.encode_grid(ONE_FIFTH))
    assert music_rewards.sample_grid(text).tolist() == ONE_FIFTH.tolist()
    assert music_rewards.no_parallels([text]) == music_rewards.no_parallels([ONE_FIFTH])
    assert music_rewards.in_key([""]) == [0.0]


def test_evaluate_grids_gives_eval_keys_with_floors():
    from genforge.metrics.music import evaluate_grids
    from genforge.report import group_of

    out = evaluate_grids([ONE_FIFTH], reference=[CLEAN], train=[CLEAN, ONE_FIFTH])
    assert out["parallel_fifth_rate"] == pytest.approx(1 / 6) and out["floor_parallel_fifth_rate"] == 0.0
    assert out["memorization_copy_steps_max"] == len(ONE_FIFTH)
    assert group_of("memorization_copy_steps_max") == "memorization" and group_of("floor_cadence") == "floors"
    assert "memorization_copy_steps_max" not in evaluate_grids([CLEAN], reference=[CLEAN])
    with pytest.raises(GenforgeError, match="no held-out pieces"):
        evaluate_grids([CLEAN], reference=[])
