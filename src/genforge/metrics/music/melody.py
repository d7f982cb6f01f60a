"""Note density, melodic intervals and rhythm of (T, 4) grids (notes as in ``grid``: a new
note where the pitch changes or after a rest). Pure functions returning counts, so pieces
pool by summing.
"""

from __future__ import annotations

import numpy as np

from genforge.metrics.music.grid import REST, grid_notes

MAX_INTERVAL = 12  # interval histogram bins: -12..+12 semitones, wider leaps clipped to the ends
MAX_DURATION = 16  # duration histogram bins: 1..16 sixteenths (a whole note), longer ones in the last


def melodic_intervals(grid: np.ndarray) -> np.ndarray:
    """Signed semitone steps between consecutive notes of the same voice, where the second
    note starts right as the first ends (a rest in between breaks the line), all voices
    concatenated: (n,) int."""
    out = []
    for notes in grid_notes(grid):
        if len(notes.onset) < 2:
            continue
        joined = notes.onset[:-1] + notes.duration[:-1] == notes.onset[1:]
        out.append(np.diff(notes.pitch)[joined])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def durations(grid: np.ndarray) -> np.ndarray:
    """Every note's length in 16th steps, all voices: (n,) int. A note still sounding at the
    last step counts up to the end of the grid."""
    parts = [n.duration for n in grid_notes(grid)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def interval_counts(grid: np.ndarray) -> np.ndarray:
    """(25,) histogram of melodic intervals -12..+12 (index 12 is a repeated pitch, which this
    note definition never produces; wider leaps clipped into the end bins)."""
    iv = np.clip(melodic_intervals(grid), -MAX_INTERVAL, MAX_INTERVAL) + MAX_INTERVAL
    return np.bincount(iv, minlength=2 * MAX_INTERVAL + 1).astype(np.float64)


def duration_counts(grid: np.ndarray) -> np.ndarray:
    """(16,) histogram of note durations 1..16 sixteenths (index d-1; longer notes in the last bin)."""
    d = np.clip(durations(grid), 1, MAX_DURATION) - 1
    return np.bincount(d, minlength=MAX_DURATION).astype(np.float64)


def interval_summary(intervals: np.ndarray) -> dict[str, float]:
    """Mean |interval| in semitones; fraction of steps (1-2 semitones); fraction of leaps wider
    than an octave (which chorale voices avoid). NaN when there are no intervals."""
    if intervals.size == 0:
        return {"interval_mean_abs": float("nan"), "interval_step_fraction": float("nan"),
                "interval_over_octave_fraction": float("nan")}
    a = np.abs(intervals)
    return {"interval_mean_abs": float(a.mean()),
            "interval_step_fraction": float(((a >= 1) & (a <= 2)).mean()),
            "interval_over_octave_fraction": float((a > 12).mean())}


def rest_steps(grid: np.ndarray) -> int:
    """Voice-steps that are silent (of T x 4)."""
    return int((grid == REST).sum())
