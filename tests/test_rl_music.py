"""RL on music runs: the "music" row of rl/specs.py (an opening is part of the piece the rewards
read; prompts are whole 16th steps), chord diversity, and short real `genforge rl` runs on a tiny
grid GPT (rewards logged, resume exact)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genforge.cli import main
from genforge.rl.diversity import chord_ngrams, chords, music_diversity

pytest.importorskip("pretty_midi")

TINY = ["data.transpose=0", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=32",
        "model.dropout=0.0", "train.batch_size=8", "train.eval_every=100", "train.eval_batches=1",
        "train.plot=false", "train.checkpoint_every=100", "train.warmup_steps=2"]
RL = ["--batch-size", "4", "--eval-samples", "2", "--no-progress"]


def _rows(run_dir, split=None):
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == split]


@pytest.fixture(scope="module")
def music_base(tmp_path_factory):
    from test_music import jsb_json

    tmp = tmp_path_factory.mktemp("rl-music")
    data = jsb_json(tmp / "chorales.json", n_train=4, n_valid=1, n_test=1, T=24)
    base = tmp / "base"
    assert main(["train", "gpt-jsb", f"data.name={data}", "train.max_steps=10", *TINY,
                 "--run-dir", str(base), "--no-progress"]) == 0
    return base


# --------------------------------------------------------------------------- pure pieces


def test_chord_diversity_counts_sonorities_not_steps():
    a = np.array([[67, 64, 60, 48]] * 4 + [[65, 62, 59, 43]] * 2 + [[64, 60, 55, 48]] * 4)
    assert chords(a) == [(67, 64, 60, 48), (65, 62, 59, 43), (64, 60, 55, 48)]  # held chords once
    assert chords(np.full((3, 4), -1)) == []  # silence has no chords
    assert chord_ngrams(a) == [tuple(chords(a))]
    same = music_diversity([a, a])  # one piece twice: half the chords and pairs are repeats
    assert same == {"distinct_1": 0.5, "distinct_2": 0.5, "unique": 0.5}
    b = a + 2
    assert music_diversity([a, b]) == {"distinct_1": 1.0, "distinct_2": 1.0, "unique": 1.0}
    # token text (what rollouts decode to) reads like the grid
    from genforge.data.music_tokens import MusicTokenizer

    tok = MusicTokenizer("grid")
    assert chords(tok.decode(tok.encode_grid(a))) == chords(a)


def test_music_prompts_are_openings_in_whole_steps(tmp_path):
    from genforge import GenforgeError
    from genforge.data.music import grid_to_midi
    from genforge.data.music_tokens import MusicTokenizer
    from genforge.rl.specs import rl_spec

    class Data:
        tokenizer = MusicTokenizer("grid")

    spec = rl_spec("music")
    assert spec.prompt_in_sample and spec.prompts and spec.diversity is music_diversity
    opening = np.array([[67, 64, 60, 48]] * 4 + [[69, 65, 60, 53]] * 4)
    path = grid_to_midi(opening, tmp_path / "opening.mid")
    ids = spec.encode_prompt(str(path), Data)
    assert Data.tokenizer.decode_grid(ids)[0].tolist() == opening.tolist()
    assert spec.encode_prompt("p67 p64 p60 p48 hold hold hold hold", Data) == Data.tokenizer.encode(
        "p67 p64 p60 p48 hold hold hold hold")
    for bad, message in [("p67 p64 p60", "whole 16th steps"), (str(tmp_path / "none.mid"), "no such MIDI file"),
                         ("p67 x", "not a grid music token")]:
        with pytest.raises(GenforgeError, match=message):
            spec.encode_prompt(bad, Data)


# --------------------------------------------------------------------------- runs


def test_music_rl_logs_rewards_and_resumes_exactly(music_base, tmp_path):
    opts = ["--reward", "no_parallels", "--reward", "cadence=0.5", "--steps", "2", "--lr", "3e-3", *RL]
    assert main(["rl", str(music_base), *opts, "--run-dir", str(tmp_path / "once")]) == 0
    evals = _rows(tmp_path / "once", "val")
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 2
    assert {"reward", "reward_no_parallels", "reward_cadence", "kl", "distinct_2", "heldout_loss"} <= set(evals[-1])
    train = [r for r in _rows(tmp_path / "once") if "event" not in r]
    assert train and all(0.0 <= r["reward_no_parallels"] <= 1.0 for r in train)
    assert all(r["notes_per_s"] > 0 for r in train)  # rollout batches are counted in generated tokens
    assert main(["rl", str(music_base), *opts, "--stop-after", "1", "--run-dir", str(tmp_path / "twice")]) == 0
    assert main(["rl", "--resume", str(tmp_path / "twice"), "--no-progress"]) == 0
    strip = ("elapsed_s", "notes_per_s", "rollout_s", "reward_s")
    a, b = (_rows(tmp_path / d) for d in ("once", "twice"))
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == \
        [{k: v for k, v in r.items() if k not in strip} for r in b]


def test_music_prompt_is_part_of_every_scored_piece(music_base, tmp_path, monkeypatch, capsys):
    from genforge.rl.policy import SequencePolicy

    seen, rollout = [], SequencePolicy.rollout_batch

    def spy(self, rows, generator):
        roll = rollout(self, rows, generator)
        seen.extend(roll.samples)
        return roll

    monkeypatch.setattr(SequencePolicy, "rollout_batch", spy)
    opening = "p67 p64 p60 p48 hold hold hold hold"
    assert main(["rl", str(music_base), "--reward", "in_key", "--prompt", opening, "--steps", "1", *RL,
                 "--run-dir", str(tmp_path / "rl")]) == 0
    assert seen and all(s.startswith(opening) for s in seen)
    assert main(["rl", str(music_base), "--reward", "in_key", "--prompt", "p67 p64", "--steps", "1", *RL,
                 "--run-dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "whole 16th steps" in err and "Traceback" not in err and not (tmp_path / "bad").exists()


def test_music_policy_samples_are_plain_music_runs(music_base, tmp_path):
    """An RL run's checkpoint samples MIDI like its base (the policy is the GPT's own class)."""
    import mido

    run = tmp_path / "rl"
    assert main(["rl", str(music_base), "--reward", "voice_ranges", "--steps", "1", *RL, "--run-dir", str(run)]) == 0
    out = tmp_path / "piece.mid"
    assert main(["sample", str(run), "--out", str(out), "--steps", "4", "--seed", "0"]) == 0
    assert mido.MidiFile(out).length > 0
