"""What a new user reads on README's music path (train, sample, continue, listen, score): the
messages say what happened, in one line each."""

from __future__ import annotations

import pytest
from tests.test_music import TINY, chorale, jsb_json, music_run  # noqa: F401  (music_run: a tiny gpt-jsb, 32-token context)

from genforge.cli import main
from genforge.data.music import grid_to_midi, read_midi_grid

pytest.importorskip("pretty_midi")


def test_the_written_line_gives_one_length_when_pieces_agree(music_run, tmp_path, capsys):  # noqa: F811
    assert main(["sample", str(music_run), "--out", str(tmp_path / "a.mid"), "--steps", "3", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert f"wrote 1 piece(s) of {len(read_midi_grid(tmp_path / 'a.mid'))} 16th steps: " in out  # not "4-4"


def test_a_long_opening_says_how_little_is_added_and_how_to_get_more(music_run, tmp_path, capsys):  # noqa: F811
    opening = grid_to_midi(chorale(6, 2), tmp_path / "open.mid")  # 24 tokens + <bos> of a 32-token context
    out = tmp_path / "cont.mid"
    assert main(["sample", str(music_run), "--out", str(out), "--prompt-midi", str(opening), "--seed", "0"]) == 0
    err = capsys.readouterr().err
    assert "at most 2 16th steps are added; give --steps N to continue further" in err
    assert len(read_midi_grid(out)) <= 6 + 2
    # with --steps the context slides and the piece grows as asked; no note then
    assert main(["sample", str(music_run), "--out", str(tmp_path / "long.mid"), "--prompt-midi", str(opening),
                 "--steps", "10", "--seed", "0"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert len(read_midi_grid(tmp_path / "long.mid")) > 8
    short = grid_to_midi(chorale(1, 3), tmp_path / "short.mid")  # room for 7 steps: still under a bar
    assert main(["sample", str(music_run), "--out", str(tmp_path / "s.mid"), "--prompt-midi", str(short)]) == 0
    assert "at most 7 16th steps" in capsys.readouterr().err


def test_wav_without_fluidsynth_is_one_line_and_writes_nothing(music_run, tmp_path, capsys, monkeypatch):  # noqa: F811
    import genforge.data.music_render as render

    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    wav = tmp_path / "piece.wav"
    assert main(["sample", str(music_run), "--out", str(wav), "--steps", "2", "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "apt install fluidsynth fluid-soundfont-gm" in err
    assert not wav.exists() and not list(tmp_path.iterdir())


def test_music_metrics_print_step_counts_as_counts(tmp_path, capsys):
    """copy_steps_median is a number of 16th steps: '0' or '2.5', never '0.0000'."""
    from genforge.cli_music import _cell

    assert _cell(0.0, "copy_steps_median") == "0" and _cell(2.5, "copy_steps_median") == "2.5"
    assert _cell(14.0, "copy_steps_median") == "14" and _cell(0.0, "rest_fraction") == "0.0000"


def test_eval_printout_puts_the_music_rows_under_their_own_heading():
    from genforge.report import format_report

    text = format_report({"step": 20, "nll_per_note_val": 1.77, "pieces": 16, "pitch_class_js": 0.07,
                          "range_violation_rate": 0.8, "memorization_copy_steps_median": 0.0,
                          "floor_pitch_class_js": 0.0003})
    lines = [" ".join(line.split()) for line in text.splitlines()]  # "key: value", padding dropped
    assert lines.index("music:") < lines.index("pitch_class_js: 0.0700") < lines.index("floors:")
    assert lines.index("range_violation_rate: 0.8000") < lines.index("floors:") < lines.index("other:")
    assert lines[lines.index("other:") + 1:] == ["step: 20"]  # no music row left under "other"
    assert "memorization_copy_steps_median: 0" in lines  # a count of steps, not 0.0000


def test_train_ends_by_showing_how_to_write_a_piece(tmp_path, capsys):
    data = jsb_json(tmp_path / "tiny.json")
    assert main(["train", "gpt-jsb", "--run-dir", str(tmp_path / "r"), "--no-progress", f"data.name={data}",
                 *TINY]) == 0
    assert f"sample from it: genforge sample {tmp_path / 'r'} --out piece.mid" in capsys.readouterr().out


@pytest.mark.parametrize("extra, says", [
    (["--tempo", "0"], "--tempo must be between 4 and 1000 quarter notes per minute, got 0.0"),
    (["--tempo", "inf"], "--tempo must be between 4 and 1000 quarter notes per minute, got inf"),
    # a MIDI file holds microseconds per quarter in 24 bits: 2 bpm was a mido traceback, and 1e9
    # bpm rounded to 0 and wrote a file no MIDI reader (genforge's own included) could load
    (["--tempo", "2"], "--tempo must be between 4 and 1000 quarter notes per minute, got 2.0"),
    (["--tempo", "1e9"], "--tempo must be between 4 and 1000 quarter notes per minute, got 1000000000.0"),
    (["--tempo", "100", "--out", "roll.png"], "a .png piano roll has none"),
])
def test_a_tempo_that_is_bad_or_has_nowhere_to_go_is_refused_before_sampling(music_run, tmp_path, monkeypatch,  # noqa: F811
                                                                             capsys, extra, says):
    monkeypatch.chdir(tmp_path)
    before = sorted((music_run / "samples").iterdir()) if (music_run / "samples").exists() else []
    assert main(["sample", str(music_run), "--steps", "2", "--seed", "0", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.count("\n") == 0 and "Traceback" not in err
    assert not list(tmp_path.iterdir())
    assert (sorted((music_run / "samples").iterdir()) if (music_run / "samples").exists() else []) == before
