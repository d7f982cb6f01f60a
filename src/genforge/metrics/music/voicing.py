"""Voice-leading checks of (T, 4) grids: voice ranges and parallel fifths and octaves.

Pure functions of numpy arrays, counting events so callers can pool them over pieces
(a rate is always the pooled count over the pooled opportunities).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from genforge.metrics.music.grid import REST, grid_notes

# SATB ranges for chorale-style part writing, as MIDI pitches (inclusive): soprano C4-G5,
# alto G3-D5, tenor C3-G4, bass E2-D4. These are the class-use ranges harmony courses give
# (each a twelfth wide except the bass's, tenor an octave below soprano; e.g. the four-part
# writing guides of Open Music Theory and of Fiveable's "Tonal Composition"). Bach himself
# leaves them for ~0.4% of his JSB notes (measured), the data's floor.
SATB_RANGES = ((60, 79), (55, 74), (48, 67), (40, 62))

FIFTH, OCTAVE = 7, 0  # interval classes (semitones mod 12); OCTAVE includes unisons


def range_violations(grid: np.ndarray, ranges=SATB_RANGES) -> tuple[int, int]:
    """(notes outside their voice's range, notes). A note is counted once however long it
    lasts; voices beyond the four ranges are not checked."""
    bad = total = 0
    for notes, (low, high) in zip(grid_notes(grid), ranges, strict=False):
        bad += int(((notes.pitch < low) | (notes.pitch > high)).sum())
        total += len(notes.pitch)
    return bad, total


class Parallels(NamedTuple):
    fifths: int       # parallel perfect fifths (and twelfths...)
    octaves: int      # parallel octaves (and unisons, double octaves...)
    transitions: int  # voice-pair transitions: the opportunities


def parallels(grid: np.ndarray) -> Parallels:
    """Parallel fifths and octaves, counted per voice-pair transition.

    A **voice-pair transition** is a pair of voices (i, j), i < j (6 pairs of 4 voices), at
    consecutive steps t-1 -> t where both voices sound at both steps and at least one of
    them changes pitch. It is a **parallel fifth** (octave) when the interval between the
    two voices is a perfect fifth (octave), compound or not, i.e. |p_i - p_j| mod 12 = 7
    (0, unisons included), at both steps, and both voices move in the same direction
    (both rise or both fall). Crossed voices are measured by the absolute interval. A
    fifth and an octave at the two steps are neither. Oblique and contrary motion are not
    parallels (contrary fifths, "consecutive fifths by contrary motion", are not counted).
    """
    if grid.shape[0] < 2:
        return Parallels(0, 0, 0)
    prev, cur = grid[:-1], grid[1:]  # (T-1, V) each
    fifths = octaves = transitions = 0
    voices = grid.shape[1]
    for i in range(voices):
        for j in range(i + 1, voices):
            sound = (prev[:, i] != REST) & (prev[:, j] != REST) & (cur[:, i] != REST) & (cur[:, j] != REST)
            move_i, move_j = cur[:, i] - prev[:, i], cur[:, j] - prev[:, j]
            moving = sound & ((move_i != 0) | (move_j != 0))
            same_direction = moving & (np.sign(move_i) == np.sign(move_j)) & (move_i != 0)
            before = np.abs(prev[:, i] - prev[:, j]) % 12
            after = np.abs(cur[:, i] - cur[:, j]) % 12
            fifths += int((same_direction & (before == FIFTH) & (after == FIFTH)).sum())
            octaves += int((same_direction & (before == OCTAVE) & (after == OCTAVE)).sum())
            transitions += int(moving.sum())
    return Parallels(fifths, octaves, transitions)
