"""Pitch classes and keys of (T, 4) grids: histograms, the Krumhansl-Schmuckler key,
key consistency and the final cadence. Pure functions of numpy arrays.

Key finding is the Krumhansl-Schmuckler algorithm (Krumhansl 1990, "Cognitive Foundations
of Musical Pitch", ch. 4): correlate the piece's duration-weighted pitch-class histogram
with the 24 rotations of the Krumhansl-Kessler probe-tone profiles (Krumhansl & Kessler
1982, Psychological Review 89:334) and take the best. Written here (12 lines of numpy)
rather than through music21, which needs a Stream and is ~1000x slower per piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from genforge.metrics.music.grid import REST, grid_notes

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Scale degrees (semitones above the tonic) counted "in key". Minor takes the natural,
# harmonic and melodic forms together (raised 6th and 7th), as tonal minor uses all three.
SCALES = {"major": frozenset({0, 2, 4, 5, 7, 9, 11}), "minor": frozenset({0, 2, 3, 5, 7, 8, 9, 10, 11})}
# Thirds of the tonic triad: minor pieces may end on the major triad (the Picardy third,
# which most of Bach's minor chorales do).
TONIC_THIRDS = {"major": frozenset({4}), "minor": frozenset({3, 4})}
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


class Key(NamedTuple):
    tonic: int  # pitch class 0..11 (C = 0)
    mode: str   # "major" or "minor"

    def __str__(self) -> str:
        return f"{PITCH_NAMES[self.tonic]} {self.mode}"


def pitch_class_counts(grid: np.ndarray) -> np.ndarray:
    """(12,) float: 16th-steps sounded on each pitch class, all voices (duration-weighted)."""
    sounding = grid[grid != REST]
    return np.bincount(sounding % 12, minlength=12).astype(np.float64)


def estimate_key(grid: np.ndarray) -> Key | None:
    """The Krumhansl-Schmuckler key of the piece, or None when nothing sounds. Ties go to
    the lower tonic, major before minor (deterministic)."""
    counts = pitch_class_counts(grid)
    if counts.sum() == 0 or np.all(counts == counts[0]):
        return None if counts.sum() == 0 else Key(0, "major")  # a flat histogram has no key
    best, best_r = None, -np.inf
    for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = np.corrcoef(counts, np.roll(profile, tonic))[0, 1]
            if r > best_r + 1e-12:
                best, best_r = Key(tonic, mode), r
    return best


def key_consistency(grid: np.ndarray, key: Key | None = None) -> tuple[int, int]:
    """(notes in the scale of ``key`` (default: the estimated key), notes): the fraction is
    the first over the second; (0, 0) for a silent piece."""
    key = key if key is not None else estimate_key(grid)
    pitches = np.concatenate([n.pitch for n in grid_notes(grid)])
    if key is None or pitches.size == 0:
        return 0, 0
    degrees = (pitches - key.tonic) % 12
    return int(np.isin(degrees, sorted(SCALES[key.mode])).sum()), int(pitches.size)


def tonic_relative_counts(grid: np.ndarray) -> np.ndarray:
    """(12,) pitch-class counts rotated so bin 0 is the estimated tonic: a tonal profile
    comparable across pieces in different keys (zeros for a silent piece)."""
    key = estimate_key(grid)
    counts = pitch_class_counts(grid)
    return counts if key is None else np.roll(counts, -key.tonic)


def normalized(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.full(counts.shape, 1.0 / counts.size)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1], of two histograms (normalized here); NaN
    when either is empty (silent pieces have no pitch classes, intervals or note lengths to
    compare, and a flat stand-in gave them a made-up distance)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if not p.sum() > 0 or not q.sum() > 0:
        return float("nan")
    p, q = normalized(p), normalized(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def corpus_tonal_histogram(grids: Sequence[np.ndarray]) -> np.ndarray:
    """Tonic-relative pitch-class counts summed over pieces (each piece in its own key)."""
    return np.sum([tonic_relative_counts(g) for g in grids], axis=0) if grids else np.zeros(12)


def final_chord(grid: np.ndarray) -> np.ndarray:
    """Pitches sounding at the last step where anything sounds (soprano first, rests
    dropped); empty for a silent piece."""
    sounding = np.flatnonzero((grid != REST).any(axis=1))
    if sounding.size == 0:
        return np.zeros(0, dtype=np.int64)
    row = grid[sounding[-1]]
    return row[row != REST]


def cadence_score(grid: np.ndarray, key: Key | None = None) -> float:
    """How far the piece ends on its tonic: 0.5 for the bass (lowest sounding pitch) on the
    tonic plus 0.5 for a final chord of at least three voices whose pitch classes all belong
    to the tonic triad (root, third, fifth; minor may take the Picardy major third) and
    include its root and third. 1.0 is a root-position tonic triad; 0 for silence."""
    key = key if key is not None else estimate_key(grid)
    chord = final_chord(grid)
    if key is None or chord.size == 0:
        return 0.0
    degrees = set(((chord - key.tonic) % 12).tolist())
    thirds = TONIC_THIRDS[key.mode]
    bass_on_tonic = (int(chord.min()) - key.tonic) % 12 == 0
    triad = (chord.size >= 3 and degrees <= {0, 7} | thirds and 0 in degrees
             and bool(degrees & thirds))
    return 0.5 * bass_on_tonic + 0.5 * triad
