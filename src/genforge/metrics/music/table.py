"""The music metric table of a set of pieces, and the same table of real Bach beside it.

Every number is pooled over the pieces (counts summed, then divided), so a long piece weighs
as much as its notes. The distances compare the pieces with a set of real chorales; the
reference row measures real chorales the same way (JSB test against JSB valid, memorization
of JSB test against JSB train), so a reader sees the data's own floor beside each number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genforge.metrics.music.grid import STEPS_PER_QUARTER, check_grids, note_count
from genforge.metrics.music.melody import (
    duration_counts,
    durations,
    interval_counts,
    interval_summary,
    melodic_intervals,
    rest_steps,
)
from genforge.metrics.music.memorization import CopyIndex
from genforge.metrics.music.tonal import (
    cadence_score,
    corpus_tonal_histogram,
    js_divergence,
    key_consistency,
)
from genforge.metrics.music.voicing import parallels, range_violations

# (key, what it measures): the table's rows, in order, for printing and docs.
ROWS = (
    ("pieces", "pieces measured"),
    ("notes", "notes (a new note where a voice's pitch changes or after a rest)"),
    ("pitch_class_js", "JS divergence (bits) of tonic-relative pitch-class histograms vs real chorales"),
    ("key_consistency", "fraction of notes in the scale of the Krumhansl-Schmuckler key"),
    ("cadence", "mean final-cadence score (1 = root-position tonic triad)"),
    ("notes_per_quarter", "note onsets per quarter note, four voices together"),
    ("rest_fraction", "fraction of voice-steps that are rests"),
    ("interval_mean_abs", "mean |melodic interval| within a voice (semitones)"),
    ("interval_step_fraction", "fraction of melodic intervals that are steps (1-2 semitones)"),
    ("interval_over_octave_fraction", "fraction of melodic leaps wider than an octave"),
    ("interval_js", "JS divergence (bits) of melodic-interval histograms vs real chorales"),
    ("duration_mean", "mean note length (16ths)"),
    ("duration_js", "JS divergence (bits) of note-length histograms vs real chorales"),
    ("range_violation_rate", "fraction of notes outside the SATB ranges"),
    ("parallel_fifth_rate", "parallel fifths per voice-pair transition"),
    ("parallel_octave_rate", "parallel octaves/unisons per voice-pair transition"),
    ("copy_steps_max", "longest run of 16th steps copied from a training chorale (max over pieces)"),
    ("copy_steps_median", "the same, median over pieces"),
)


def _rate(num: int, den: int) -> float:
    return num / den if den else float("nan")


def music_metrics(grids: Sequence, against: Sequence | None = None,
                  copies: CopyIndex | None = None) -> dict[str, float]:
    """The table of ``grids`` ((T, 4) each). ``against``: real chorales for the three JS
    distances (left out without them); ``copies``: the training chorales' index for
    memorization (left out without it). Rates with nothing to count are NaN."""
    grids = check_grids(grids)
    steps = sum(g.shape[0] for g in grids)
    notes = sum(note_count(g) for g in grids)
    in_key = [key_consistency(g) for g in grids]
    ranges = [range_violations(g) for g in grids]
    pars = [parallels(g) for g in grids]
    intervals = np.concatenate([melodic_intervals(g) for g in grids])
    lengths = np.concatenate([durations(g) for g in grids])
    transitions = sum(p.transitions for p in pars)
    out: dict[str, float] = {
        "pieces": len(grids),
        "notes": notes,
        "key_consistency": _rate(sum(a for a, _ in in_key), sum(b for _, b in in_key)),
        "cadence": float(np.mean([cadence_score(g) for g in grids])),
        "notes_per_quarter": _rate(notes * STEPS_PER_QUARTER, steps),
        "rest_fraction": _rate(sum(rest_steps(g) for g in grids), steps * grids[0].shape[1]),
        **interval_summary(intervals),
        "duration_mean": float(lengths.mean()) if lengths.size else float("nan"),
        "range_violation_rate": _rate(sum(a for a, _ in ranges), sum(b for _, b in ranges)),
        "parallel_fifth_rate": _rate(sum(p.fifths for p in pars), transitions),
        "parallel_octave_rate": _rate(sum(p.octaves for p in pars), transitions),
    }
    if against is not None:
        real = check_grids(against, "reference piece")
        out["pitch_class_js"] = js_divergence(corpus_tonal_histogram(grids), corpus_tonal_histogram(real))
        out["interval_js"] = js_divergence(sum(interval_counts(g) for g in grids),
                                           sum(interval_counts(g) for g in real))
        out["duration_js"] = js_divergence(sum(duration_counts(g) for g in grids),
                                           sum(duration_counts(g) for g in real))
    if copies is not None:
        runs = [copies.longest_copy(g).steps for g in grids]
        out["copy_steps_max"] = int(max(runs))
        out["copy_steps_median"] = float(np.median(runs))
    return {key: out[key] for key, _ in ROWS if key in out}
