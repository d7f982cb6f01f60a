"""`genforge sample --melody FILE` on a grid GPT: each step's soprano is forced from the melody
and the model samples alto, tenor and bass after it (``sampling.forcing.ForcedSlots``)."""

from __future__ import annotations

import mido  # the independent MIDI reader
import numpy as np
import pytest
import torch

from genforge.cli import main
from genforge.sampling.forcing import ForcedSlots

pytest.importorskip("pretty_midi")

TINY = ["data.transpose=0", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=32",
        "train.batch_size=8", "train.eval_every=100", "train.eval_batches=1", "train.plot=false",
        "train.checkpoint_every=100", "train.warmup_steps=2"]


def test_forced_slots_fix_every_period_and_end_the_piece():
    hook = ForcedSlots([7, 8], period=4, slot=0, prompt_len=1, eos_id=2, banned=[0, 1])
    logits = torch.zeros(3, 10)
    picks = []
    for k in range(hook.length + 1):
        out = hook(logits, torch.zeros(3, 1 + k, dtype=torch.long))
        free = torch.isfinite(out[0])
        picks.append(int(out[0].argmax()) if free.sum() == 1 else None)
        assert torch.equal(out[0], out[2])  # every row alike
        if picks[-1] is None:
            assert not free[:3].any() and free.sum() == 7  # a free slot: anything but the specials
    assert picks == [7, None, None, None, 8, None, None, None, 2]
    with pytest.raises(ValueError):
        ForcedSlots([1], period=4, slot=4, prompt_len=1, eos_id=2)


def test_melody_is_the_soprano_of_every_harmonization(tmp_path, capsys):
    from test_music import chorale, jsb_json

    from genforge.data.music import REST, grid_notes, grid_to_midi, read_midi_notes

    data = jsb_json(tmp_path / "chorales.json", n_train=4, n_valid=1, n_test=1, T=32)
    run = tmp_path / "run"
    assert main(["train", "gpt-jsb", f"data.name={data}", "train.max_steps=3", *TINY, "--run-dir", str(run),
                 "--no-progress"]) == 0
    tune = chorale(20, 5)[:, :1]  # one line: a soprano with held notes and a rest
    tune[6:8] = REST
    melody = np.full((20, 4), REST)
    melody[:, 0] = tune[:, 0]
    path = grid_to_midi(melody, tmp_path / "soprano.mid")
    out = tmp_path / "harmony.mid"
    # 20 steps of 4 tokens: longer than the 32-token context, so the crop past the window is used too
    assert main(["sample", str(run), "--melody", str(path), "--num-samples", "2", "--seed", "0",
                 "--out", str(out)]) == 0
    sung = [n for n in grid_notes(melody) if n[0] == 0]  # (voice 0, pitch, start, end)
    for i in (1, 2):
        piece = tmp_path / f"harmony-{i}.mid"
        tracks = mido.MidiFile(piece).tracks
        assert sum(m.type == "note_on" and m.velocity > 0 for t in tracks for m in t) > len(sung)
        notes, _ = read_midi_notes(piece)  # part 0 is the Soprano track (written first)
        assert sorted(n for n in notes if n[0] == 0) == sorted(sung)
    capsys.readouterr()
    assert main(["sample", str(run), "--melody", str(tmp_path / "none.mid"), "--out", str(tmp_path / "n.mid")]) == 2
    assert "no such file" in capsys.readouterr().err
