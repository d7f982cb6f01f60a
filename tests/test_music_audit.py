"""Memorization audit and privacy filter on music runs: a planted copy of a training chorale (or a
transposition the run trained on) is found, reported beside the held-out floor, and blocked by
`genforge sample --privacy-filter`; `--filter` screens music runs too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genforge import GenforgeError
from genforge.audit.music import MUSIC_MIN_COPY, TrainingIndex, excerpts, music_memorization
from genforge.cli import main
from genforge.data.music_tokens import MusicTokenizer

pytest.importorskip("pretty_midi")

TINY = ["data.transpose=0", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=32",
        "train.batch_size=8", "train.eval_every=100", "train.eval_batches=1", "train.plot=false",
        "train.checkpoint_every=100", "train.warmup_steps=2"]


def pieces(n: int, T: int = 96, seed: int = 0) -> list[np.ndarray]:
    from test_music import chorale

    return [chorale(T, seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    from test_music import jsb_json

    tmp = tmp_path_factory.mktemp("music-audit")
    data = jsb_json(tmp / "chorales.json", n_train=4, n_valid=1, n_test=2, T=64)
    run = tmp / "run"
    assert main(["train", "gpt-jsb", f"data.name={data}", "train.max_steps=4", *TINY, "--run-dir", str(run),
                 "--no-progress"]) == 0
    return run


def test_a_planted_copy_is_found_with_its_source_and_the_floor():
    train = pieces(5)
    index = TrainingIndex(train)
    planted = np.concatenate([pieces(1, 8, seed=99)[0], train[3][10:70], pieces(1, 6, seed=98)[0]])
    report = music_memorization([planted, pieces(1, 40, seed=50)[0]], index, threshold=48,
                                heldout=pieces(3, seed=60))
    assert report["longest_copy"] >= 60 and report["longest_copy_sample"] == 0
    src = report["longest_copy_source"]
    assert (src["train_index"], src["shift"]) == (3, 0) and src["start"] - src["train_start"] == 8 - 10
    assert report["copies"] == 1 and report["copy_lengths"][1] < 48
    assert report["heldout_pieces"] == 3 and report["heldout_longest_copy"] < 48
    assert report["heldout_excerpt_steps"] == round((len(planted) + 40) / 2)
    assert [len(e) for e in excerpts([train[0], train[0][:10]], 20)] == [20, 10]
    with pytest.raises(GenforgeError, match="no music samples"):
        music_memorization([], index)


def test_a_transposed_copy_counts_only_when_the_run_trained_on_transpositions():
    train = pieces(3)
    moved = np.where(train[1] < 0, -1, train[1] + 2)[5:60]
    assert TrainingIndex(train).longest(moved)["steps"] < 20  # other pitches: not a copy
    found = TrainingIndex(train, transpose=2).longest(moved)
    assert (found["steps"], found["train_index"], found["shift"]) == (55, 1, 2)


def test_audit_of_a_music_run_reports_the_floor(music_run, capsys):
    capsys.readouterr()
    assert main(["audit", str(music_run), "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "longest verbatim copy from a training piece" in out and "held-out pieces" in out
    memo = json.loads((music_run / "audit.json").read_text())["memorization"]
    assert memo["samples"] == 3 and memo["threshold"] == MUSIC_MIN_COPY and memo["heldout_pieces"] == 2
    assert 0 <= memo["longest_copy"] == max(memo["copy_lengths"])


def test_privacy_filter_blocks_a_planted_copy(music_run, tmp_path, monkeypatch, capsys):
    from genforge.audit.privacy import privacy_filter_for, training_data
    from genforge.families.gpt import GPT
    from genforge.runs import load_run

    run = load_run(music_run)
    train = training_data(run).pieces["train"]
    tok = MusicTokenizer("grid")
    copy = tok.encode_grid(train[2][4:44])  # 40 steps verbatim
    fresh = tok.encode_grid(np.array([[72, 67, 64, 48]] * 8 + [[74, 69, 65, 50]] * 8))
    f = privacy_filter_for(run, "32")
    verdicts = f.fn([tok.decode(copy), tok.decode(fresh)])
    assert verdicts[1] == (True, None) and verdicts[0][0] is False
    assert "40 16th steps verbatim from training piece 2" in verdicts[0][1]
    assert privacy_filter_for(run, "41").fn([tok.decode(copy)]) == [(True, None)]
    for bad in ("0", "x", "2.5"):
        with pytest.raises(GenforgeError, match="16th steps"):
            privacy_filter_for(run, bad)

    # through `genforge sample`: the model is made to emit the copy and a fresh piece
    monkeypatch.setattr(GPT, "sample", lambda self, n, generator, **kw: [copy, fresh][:n])
    capsys.readouterr()
    out = tmp_path / "piece.mid"
    assert main(["sample", str(music_run), "--num-samples", "2", "--privacy-filter", "32", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "blocked 1 of 2 pieces" in captured.err and "verbatim" in captured.err
    assert (tmp_path / "piece-1.mid").is_file() and not (tmp_path / "piece-2.mid").exists()
    # the default threshold (48 steps) lets a 40-step copy through
    assert main(["sample", str(music_run), "--num-samples", "2", "--privacy-filter", "--out",
                 str(tmp_path / "all.mid")]) == 0
    assert (tmp_path / "all-2.mid").is_file()


def test_user_filters_screen_music_and_blocking_all_writes_nothing(music_run, tmp_path, capsys):
    rules = tmp_path / "rules.py"
    rules.write_text("def first(samples):\n"
                     "    assert all(isinstance(s, str) for s in samples)  # token text, as rewards get\n"
                     "    return [True] + [(False, 'not the first') for _ in samples[1:]]\n"
                     "def none(samples):\n    return [False for _ in samples]\n")
    out = tmp_path / "x.mid"
    assert main(["sample", str(music_run), "--num-samples", "3", "--steps", "4", "--out", str(out),
                 "--filter", f"{rules}:none"]) == 2
    err = capsys.readouterr().err
    assert "every one of the 3 pieces was blocked" in err and "Traceback" not in err
    assert not list(tmp_path.glob("x*.mid"))
    assert main(["sample", str(music_run), "--num-samples", "3", "--steps", "4", "--out", str(out),
                 "--filter", f"{rules}:first"]) == 0
    err = capsys.readouterr().err
    assert "blocked 2 of 3 pieces" in err and "not the first" in err
    assert [p.name for p in tmp_path.glob("x*.mid")] == ["x-1.mid"]
