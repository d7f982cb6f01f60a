"""Music metrics of four-voice grids ((T, 4) MIDI pitches per 16th, -1 = rest), each beside
the same number measured on real Bach.

One idea per module, pure functions of numpy arrays: :mod:`.grid` (the grid, its notes, grid
files), :mod:`.tonal` (pitch-class histograms, the Krumhansl-Schmuckler key, key consistency,
the cadence), :mod:`.melody` (note density, melodic intervals, rhythm), :mod:`.voicing` (SATB
ranges, parallel fifths and octaves), :mod:`.memorization` (the longest copied run, by
rolling hashes), :mod:`.table` (the pooled table) and :mod:`.reference` (JSB and music21's
chorales as the reference). The RL rewards built on them are in ``genforge.rl.music_rewards``.
"""

from genforge.metrics.music.grid import (
    Notes,
    as_grid,
    check_grids,
    grid_notes,
    read_grid_files,
    read_grids,
    voice_notes,
)
from genforge.metrics.music.melody import durations, melodic_intervals
from genforge.metrics.music.memorization import Copy, CopyIndex
from genforge.metrics.music.reference import (
    REFERENCES,
    Reference,
    evaluate_grids,
    load_reference,
    reference_from_splits,
)
from genforge.metrics.music.table import ROWS, music_metrics
from genforge.metrics.music.tonal import (
    Key,
    cadence_score,
    estimate_key,
    js_divergence,
    key_consistency,
)
from genforge.metrics.music.voicing import SATB_RANGES, Parallels, parallels, range_violations

__all__ = ["REFERENCES", "ROWS", "SATB_RANGES", "Copy", "CopyIndex", "Key", "Notes", "Parallels", "Reference",
           "as_grid", "cadence_score", "check_grids", "durations", "estimate_key", "evaluate_grids", "grid_notes",
           "js_divergence", "key_consistency", "load_reference", "melodic_intervals", "music_metrics",
           "parallels", "range_violations", "read_grid_files", "read_grids", "reference_from_splits",
           "voice_notes"]
