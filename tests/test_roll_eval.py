"""`genforge eval` and `--tempo` on a piano-roll image run (jsb-roll): the samples decoded as music
and scored beside real Bach, and the written tempo (modalities/roll_music.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.test_roll_music import fake_jsb, roll_run  # noqa: F401  (roll_run: the module's fixture)

from genforge.cli import main
from genforge.modalities.roll_music import roll_music_metrics

pretty_midi = pytest.importorskip("pretty_midi")


@pytest.fixture
def jsb(monkeypatch):
    """The chorales the fixture run trained on, for eval's reloading of its data."""
    import genforge.data.music as music

    monkeypatch.setattr(music, "load_jsb", fake_jsb)


def test_eval_reports_the_decoded_samples_music_beside_real_bach(roll_run, jsb, capsys):  # noqa: F811
    assert main(["eval", str(roll_run), "--num-samples", "6"]) == 0
    out = capsys.readouterr().out
    music = out[out.index("music"):]
    for key in ("pitch_class_js", "key_consistency", "range_violation_rate", "parallel_fifth_rate"):
        assert f"\n  {key}:" in music  # the samples' row, under the music heading
    result = json.loads((roll_run / "eval.json").read_text())
    assert result["pieces"] == 6  # every drawn sample, not capped by the small test split
    assert result["notes"] > 0 and 0 <= result["key_consistency"] <= 1
    assert result["memorization_copy_steps_max"] <= 32  # a sample is one 2-bar roll
    # Real Bach's floor: the test excerpts through roll and back, as many as the test split holds
    # (synthetic 128- and 136-step chorales: 4 non-overlapping 32-step excerpts each)
    assert result["floor_pieces"] == 8 and result["floor_key_consistency"] > 0
    assert np.isfinite(result["floor_pitch_class_js"]) and "floor_memorization_copy_steps_max" in result
    # no extractor was fitted on these synthetic rolls: the feature metrics say why, music still comes
    assert "fd" not in result and "feature metrics skipped" in result["note"]


def tempo_of(path) -> float:
    _, tempi = pretty_midi.PrettyMIDI(str(path)).get_tempo_changes()
    return float(tempi[0])


def test_tempo_sets_the_written_midi_tempo(roll_run, tmp_path):  # noqa: F811
    slow, default = tmp_path / "slow.mid", tmp_path / "default.mid"
    assert main(["sample", str(roll_run), "--out", str(slow), "--seed", "1", "--tempo", "60"]) == 0
    assert main(["sample", str(roll_run), "--out", str(default), "--seed", "1"]) == 0
    assert tempo_of(slow) == pytest.approx(60.0) and tempo_of(default) == pytest.approx(100.0)
    a, b = pretty_midi.PrettyMIDI(str(slow)), pretty_midi.PrettyMIDI(str(default))
    if b.get_end_time() > 0:  # same notes, 100/60 as long
        assert a.get_end_time() == pytest.approx(b.get_end_time() * 100 / 60, rel=1e-3)


@pytest.mark.parametrize("extra, says", [
    (["--tempo", "0", "--out", "p.mid"], "--tempo must be between 4 and 1000 quarter notes per minute, got 0.0"),
    (["--tempo", "nan", "--out", "p.mid"], "--tempo must be between 4 and 1000 quarter notes per minute, got nan"),
    (["--tempo=-90", "--out", "p.wav"], "--tempo must be between 4 and 1000 quarter notes per minute, got -90.0"),
    (["--tempo", "80", "--out", "p.npz"], "--tempo sets the tempo of the music a piano-roll run writes"),
    (["--tempo", "80"], "this call writes images"),
    # the default typed out is still typed: it was once taken for "not given" and let through
    (["--tempo", "100", "--out", "p.npz"], "--tempo sets the tempo of the music a piano-roll run writes"),
    (["--tempo", "100"], "this call writes images"),
    (["--tempo", "90", "--out", "p.png"], "a .png piano roll has none"),
])
def test_bad_or_misplaced_tempo_is_refused_in_one_line(roll_run, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                       extra, says):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(roll_run), "--seed", "0", *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_training_rolls_scored_as_samples_are_found_copied_whole(roll_run, jsb):  # noqa: F811
    """The memorization index is the training chorales through roll and back, so a training roll
    given as a sample matches row for row over its 32 steps (decoding uncrosses voices and merges
    unisons: raw chorales would not match a decoded copy); random rolls copy far less."""
    import torch

    from genforge.config import DataConfig
    from genforge.data.images import load_images
    from genforge.runs import load_run

    run = load_run(roll_run, use_ema=False, device="cpu")
    data = load_images(DataConfig(**{**run.config.data.model_dump(), "hflip": False}))
    score = roll_music_metrics(run)
    copied = score(data.train.images[:4].float() / 255.0, data)
    assert copied["memorization_copy_steps_max"] == 32 and copied["memorization_copy_steps_median"] == 32
    noise = (torch.rand((4, 1, 48, 32), generator=torch.Generator().manual_seed(0)) > 0.93).float()
    assert score(noise, data)["memorization_copy_steps_max"] < 32
    assert copied["floor_pieces"] == len(data.test)  # the floor does not depend on the samples


def test_other_image_runs_get_no_music_metrics():
    from types import SimpleNamespace

    assert roll_music_metrics(SimpleNamespace(spec=SimpleNamespace(name="digits"))) is None


def test_only_roll_runs_take_tempo(roll_run):  # noqa: F811
    """--tempo is a roll run's option (modality.run_options), not every image run's."""
    from types import SimpleNamespace

    from genforge import GenforgeError
    from genforge.modalities import check_options
    from genforge.runs import load_run

    run = load_run(roll_run, use_ema=False, device="cpu")
    assert check_options(run, {"tempo": 80.0})["tempo"] == 80.0
    digits = SimpleNamespace(spec=SimpleNamespace(modality="image", name="digits"), model=run.model, config=run.config)
    with pytest.raises(GenforgeError, match="--tempo does not apply to this diffusion run"):
        check_options(digits, {"tempo": 80.0})
    assert "tempo" not in check_options(digits, {})


def test_a_served_roll_run_does_not_offer_tempo(roll_run):  # noqa: F811
    """A server answers a roll run with images: --tempo (written MIDI) is not one of its options."""
    pytest.importorskip("fastapi")
    from genforge.serve.engine import load_entries

    (entry,) = load_entries([str(roll_run)], device="cpu").values()
    assert "tempo" not in entry.options and "num_samples" in entry.options
