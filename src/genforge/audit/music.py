"""Memorization of music: the longest run of 16th steps a piece copies verbatim from a training
piece (all four voices equal at every step; ``metrics.music.memorization.CopyIndex``), beside the
same number for held-out pieces (the floor: what unseen music of the same composer shares by
chance or by the composer's own repetition). Pure functions of grids and an index; ``audit.runs``
draws the samples and ``audit.privacy`` turns the threshold into the privacy filter.

A run trained with ``data.transpose=N`` saw every training piece moved by up to N semitones, so
the index holds those transpositions too: a sample that is a training chorale in another key is
a copy of something the model trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genforge import GenforgeError

# Default near-copy threshold in 16th steps (also the privacy filter's), with why: measured on
# the JSB Chorales (exact pitches, whole chorales), 151 of the 153 held-out chorales (valid +
# test) share at most 24 steps (1.5 bars) with a training chorale (median 14-16: cadence
# formulas); the two above share 32 and 64 (Bach set some melodies more than once). 48 steps
# (3 bars of 4/4) is twice that floor, so an unseen chorale is almost never blocked, while a
# default gpt-jsb sample (64 steps: its 256-token context) that repeats three of its four bars is.
MUSIC_MIN_COPY = 48


class TrainingIndex:
    """The training pieces (T, 4) and, for transposing runs, their copies moved by each shift in
    [-transpose, transpose] that keeps every pitch in MIDI 0..127."""

    def __init__(self, train: Sequence[np.ndarray], transpose: int = 0):
        from genforge.data.music import transpose as move
        from genforge.metrics.music.memorization import CopyIndex

        if not train:
            raise GenforgeError("the run's training split holds no pieces to compare with")
        self.sources: list[tuple[int, int]] = []  # index entry -> (training piece, shift)
        grids = []
        for i, g in enumerate(train):
            g = np.asarray(g)
            sung = g[g >= 0]
            for k in range(-transpose, transpose + 1):
                if len(sung) and (sung.min() + k < 0 or sung.max() + k > 127):
                    continue
                grids.append(move(g, k))
                self.sources.append((i, k))
        self.index = CopyIndex(grids)
        self.transpose = transpose

    def longest(self, grid: np.ndarray) -> dict:
        """The longest verbatim run of ``grid`` in a training piece: steps, the piece, the
        transposition, where it starts in each."""
        c = self.index.longest_copy(np.asarray(grid))
        piece, shift = self.sources[c.train_index] if c.steps else (-1, 0)
        return {"steps": int(c.steps), "train_index": piece, "shift": shift,
                "train_start": int(c.train_start), "start": int(c.start)}


def excerpts(pieces: Sequence[np.ndarray], steps: int) -> list[np.ndarray]:
    """One excerpt of ``steps`` steps from the middle of each piece (the whole piece when shorter):
    held-out music as long as the samples, so the floor compares like with like."""
    out = []
    for g in pieces:
        start = max(0, (len(g) - steps) // 2)
        out.append(np.asarray(g)[start:start + steps])
    return out


def music_memorization(grids: Sequence[np.ndarray], index: TrainingIndex, threshold: int = MUSIC_MIN_COPY,
                       heldout: Sequence[np.ndarray] = ()) -> dict:
    """The report for music: the longest verbatim copy over all samples (where it comes from), the
    samples copying at least ``threshold`` steps, and the same for ``heldout`` pieces cut to the
    samples' mean length (the floor)."""
    if not grids:
        raise GenforgeError("no music samples to audit")
    rows = [index.longest(g) for g in grids]
    top = max(range(len(rows)), key=lambda k: rows[k]["steps"])
    lengths = [r["steps"] for r in rows]
    out = {"unit": "16th steps (all four voices equal)", "threshold": threshold, "samples": len(rows),
           "training_pieces": len({p for p, _ in index.sources}), "transpositions": index.transpose,
           "sample_steps_mean": float(np.mean([len(g) for g in grids])),
           "longest_copy": rows[top]["steps"], "longest_copy_sample": top, "longest_copy_source": rows[top],
           "median_copy": float(np.median(lengths)), "copies": sum(n >= threshold for n in lengths),
           "copy_lengths": lengths}
    if len(heldout):
        steps = max(1, int(round(out["sample_steps_mean"])))
        base = [index.longest(g)["steps"] for g in excerpts(heldout, steps)]
        out.update({"heldout_pieces": len(base), "heldout_excerpt_steps": steps,
                    "heldout_longest_copy": max(base), "heldout_median_copy": float(np.median(base)),
                    "heldout_copies": sum(n >= threshold for n in base)})
    return out
