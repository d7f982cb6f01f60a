"""`genforge report`: one self-contained HTML page comparing runs of three families."""

import base64
import json
import re
import shutil

import pytest

from genforge import GenforgeError
from genforge.cli import main
from genforge.report import format_value
from genforge.report_html import build_report, config_differences, flatten

PNG = b"\x89PNG\r\n\x1a\n"
GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=4",
       "train.eval_every=2", "train.log_every=1", "train.plot=false"]
VAE = ["train.eval_every=2", "train.log_every=1", "train.checkpoint_every=100000", "train.warmup_steps=1",
       "train.batch_size=16", "train.plot=false"]
DIFFUSION = ["model.channels=[16, 32]", "model.heads=2", "model.sampling_steps=4", "train.eval_every=2",
             "train.log_every=1", "train.plot=false", "train.checkpoint_every=1000", "train.batch_size=16"]
# What `genforge eval` writes for an image run (names from evaluate_images), made up: the VAE's eval
# would fit the digits extractor first, and this test is about the page, not the numbers.
VAE_EVAL = {"checkpoint": "step_0000004", "samples": 64, "fd": 12.3456, "kid": 0.0123, "precision": 0.61,
            "recall": 0.42, "class_entropy_norm": 0.93, "memorization_frac": 0.0, "nll_images": 64,
            "bits_per_dim": 1.2345, "floor_fd": 0.5678}


def _train(argv, run):
    assert main(["train", *argv, "--run-dir", str(run), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs: an evaluated GPT (real `genforge eval`), a VAE with an eval.json and a
    --nearest sample, a diffusion run never evaluated. Seconds on 2 cores."""
    root = tmp_path_factory.mktemp("report")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 80)
    gpt, vae, diffusion = root / "gpt", root / "vae", root / "diffusion"
    _train(["gpt-demo", f"data.name={corpus}", *GPT, "train.max_steps=4"], gpt)
    assert main(["eval", str(gpt)]) == 0
    _train(["vae-digits", *VAE, "train.max_steps=4"], vae)
    (vae / "eval.json").write_text(json.dumps(VAE_EVAL, indent=2))
    assert main(["sample", str(vae), "--num-samples", "8", "--nearest", "--seed", "0"]) == 0
    _train(["diffusion-digits", *DIFFUSION, "train.max_steps=2"], diffusion)
    return gpt, vae, diffusion


def _images(page):
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_of_three_families_is_self_contained_and_complete(runs, capsys):
    gpt, vae, diffusion = runs
    capsys.readouterr()
    assert main(["report", str(gpt), str(vae), str(diffusion)]) == 0
    assert "wrote report.html" in capsys.readouterr().out  # default: the current folder
    with open("report.html") as f:
        page = f.read()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "src=\"data:" in page
    assert not re.search(r'src="(?!data:)', page)  # every image is inline
    # every metric of every evaluated run, by name and printed value
    gpt_eval = json.loads((gpt / "eval.json").read_text())
    for result in (gpt_eval, VAE_EVAL):
        for key, value in result.items():
            assert f"<td>{key}</td>" in page
            assert f'<td class="num">{format_value(key, value)}</td>' in page
    for heading in ("quality", "diversity", "memorization", "likelihood", "floors"):
        assert f">{heading}</th>" in page
    assert f"diffusion: not evaluated: run genforge eval {diffusion}" in page
    # the config difference: max_steps 4, 4, 2; the family differs too
    assert re.search(r"<td>train\.max_steps</td><td>4</td><td>4</td><td>2</td>", page)
    assert "<td>family</td><td>gpt</td><td>vae</td><td>diffusion</td>" in page
    assert "<td>train.plot</td>" not in page  # equal in every run: not a difference
    # curves (loss + metrics), three sample grids, one nearest grid: all real PNGs
    images = _images(page)
    assert len(images) == 2 + 2 + 1  # loss, metrics, VAE grid, diffusion grid, VAE nearest
    assert all(img.startswith(PNG) and len(img) > 100 for img in images)
    assert "nearest training images" in page and "-nearest.png" in page
    assert "<pre>" in page  # the GPT's text preview

    assert main(["report", str(gpt)]) == 0  # report.html is taken: the next free name
    assert "wrote report-2.html" in capsys.readouterr().out


def test_report_escapes_what_runs_hold(runs, tmp_path):
    gpt = shutil.copytree(runs[0], tmp_path / "<b>gpt</b>")
    for old in (gpt / "samples").iterdir():
        old.unlink()
    (gpt / "samples" / "step_0000009.txt").write_text("<script>alert(1)</script> & more")
    before = sorted(p.relative_to(gpt) for p in gpt.rglob("*"))
    page = build_report([gpt])
    assert sorted(p.relative_to(gpt) for p in gpt.rglob("*")) == before  # reads runs, writes nothing
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "<b>gpt</b>" not in page and "&lt;b&gt;gpt&lt;/b&gt;" in page
    assert "one run: nothing to compare" in page


def test_report_bad_runs_are_one_line_errors_and_write_nothing(runs, tmp_path, capsys, monkeypatch):
    gpt = runs[0]
    broken = shutil.copytree(gpt, tmp_path / "broken")
    (broken / "eval.json").write_text("{not json")
    noconfig = tmp_path / "noconfig"
    noconfig.mkdir()
    cases = ((tmp_path / "missing", "no such folder"), (noconfig, "no config.json"),
             (broken, "genforge eval"))
    for bad, message in cases:
        out = tmp_path / "r.html"
        assert main(["report", str(gpt), str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("genforge: error:")
        assert not out.exists()
    taken = tmp_path / "taken.html"
    taken.write_text("mine")
    assert main(["report", str(gpt), "--out", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and taken.read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(gpt), "--out", ""]) == 2  # an empty name (an unset $VAR), not report.html
    assert "is a folder" in capsys.readouterr().err and not (tmp_path / "report.html").exists()
    with pytest.raises(GenforgeError, match="at least one"):
        build_report([])


def test_report_without_curves_or_samples_still_renders(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "gpt", "train": {"max_steps": 1}}))
    page = build_report([run])
    assert "no metrics.jsonl" in page and "no samples yet" in page and "not evaluated" in page
    assert _images(page) == []


def test_config_differences_flattens_and_marks_absent_keys():
    a = flatten({"family": "vae", "model": {"beta": 1.0, "channels": [16, 32]}, "train": {"lr": 1e-3}})
    b = flatten({"family": "vae", "model": {"channels": [16, 64]}, "train": {"lr": 1e-3}})
    assert a["model.channels"] == "[16, 32]"
    assert config_differences([a, b]) == {"model.beta": ["1.0", None], "model.channels": ["[16, 32]", "[16, 64]"]}
    assert config_differences([a, a]) == {}


# -- music runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    """A tiny evaluated GPT on synthetic four-voice chorales with two MIDI samples."""
    pytest.importorskip("pretty_midi")
    import numpy as np

    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(0)
    grids = [np.repeat(rng.integers([60, 53, 48, 36], [79, 72, 67, 60], (12, 4)), 2, axis=0).tolist()
             for _ in range(8)]
    data = root / "chorales.json"
    data.write_text(json.dumps({"train": grids[:6], "valid": grids[6:7], "test": grids[7:]}))
    run = root / "chorales"
    _train(["gpt-jsb", f"data.name={data}", *GPT, "model.block_size=32", "train.max_steps=2", "train.device=cpu",
            "train.eval_batches=1"], run)
    assert main(["eval", str(run), "--num-samples", "2"]) == 0
    for i in range(2):
        assert main(["sample", str(run), "--steps", "16", "--seed", str(i)]) == 0
    return run


def test_music_run_shows_nll_metrics_beside_bach_piano_rolls_and_audio(music_run, monkeypatch):
    from genforge.report_music import AUDIO_STEPS, MAX_ROLLS

    result = json.loads((music_run / "eval.json").read_text())
    page = build_report([music_run])
    assert "http://" not in page and "https://" not in page and not re.search(r'src="(?!data:)', page)
    for key in ("nll_per_note_val", "nll_per_note_test"):  # the held-out NLL, as eval printed it
        assert f'<td>{key}</td><td class="num">{format_value(key, result[key])}</td>' in page
    assert "<h2>Music</h2>" in page and "real Bach (held out)" in page
    # a music metric beside the same number on held-out real chorales
    key = "pitch_class_js"
    assert (f'<td>{key}</td><td class="num">{format_value(key, result[key])}</td>'
            f'<td class="num">{format_value(key, result["floor_" + key])}</td>') in page
    mids = [p for p in (music_run / "samples").iterdir() if p.suffix == ".mid"]
    rolls = [img for img in _images(page) if img.startswith(PNG)]
    assert page.count("piano roll\" src=\"data:image/png") == min(len(mids), MAX_ROLLS) and len(rolls) >= min(len(mids), MAX_ROLLS)
    if shutil.which("fluidsynth"):
        wav = base64.b64decode(re.search(r'<audio controls preload="none" src="data:audio/wav;base64,'
                                         r'([A-Za-z0-9+/=]+)"', page).group(1))
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 1000
        assert f"the first {AUDIO_STEPS} 16th steps" in page
    # without FluidSynth: one line says why, and the rest of the page stands
    monkeypatch.setattr(shutil, "which", lambda name: None)
    page = build_report([music_run])
    assert "<audio" not in page and "no audio: the fluidsynth binary is not installed" in page
    assert page.count("piano roll\" src=\"data:image/png") == min(len(mids), MAX_ROLLS)


def test_text_runs_have_no_music_section(runs):
    assert "<h2>Music</h2>" not in build_report([runs[0]])
