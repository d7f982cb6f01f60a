"""Music-theory rewards for RL on four-voice music: plain functions ``samples -> [float]`` in
[0, 1], built on ``genforge.metrics.music`` (so a reward and the metric table it moves agree).

A sample is a (T, 4) grid (array, nested list or tensor: soprano, alto, tenor, bass MIDI
pitches per 16th, -1 = rest) or a music run's decoded token text: the grid serialization
("p67 p62 p55 p43 hold hold ...", ``genforge.data.music_tokens``; chorale tokens too: their
key token and fermata flags are read past), or the event one ("bar pos0
p60 d4 ...", whose notes are voiced by pitch order at each step, as MIDI files are read).
A silent or empty sample scores 0 on every reward, so silence is never a way to avoid errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genforge.metrics.music.grid import REST, as_grid
from genforge.metrics.music.tonal import cadence_score, key_consistency
from genforge.metrics.music.voicing import parallels, range_violations

_EVENT_TOKENS = ("bar", "pos")


def _from_tokens(text: str) -> np.ndarray:
    from genforge.data.music import notes_to_grid
    from genforge.data.music_tokens import MusicTokenizer

    words = text.split()
    if not words:
        return np.zeros((0, 4), dtype=np.int64)
    events = any(w.startswith(_EVENT_TOKENS) or (w[:1] == "d" and w[1:].isdigit()) for w in words)
    chorale = any(w.startswith(("key_", "fp")) or w == "fhold" for w in words)  # keys, fermata flags
    tokenizer = MusicTokenizer("events" if events else "chorale" if chorale else "grid")
    ids = tokenizer.encode(text)
    if events:
        return notes_to_grid(tokenizer.decode_notes(ids), 1)[0]
    return tokenizer.decode_grid(ids)[0]


def sample_grid(sample: Any) -> np.ndarray:
    """One sample as an int (T, 4) grid; T may be 0 (an empty sample)."""
    if isinstance(sample, str):
        return _from_tokens(sample)
    arr = np.asarray(sample.detach().cpu() if hasattr(sample, "detach") else sample)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    return as_grid(arr, "music sample")


def _silent(grid: np.ndarray) -> bool:
    return grid.shape[0] == 0 or bool(np.all(grid == REST))


def no_parallels(samples: Sequence) -> list[float]:
    """1 - (parallel fifths + parallel octaves) / voice-pair transitions (the definition of
    ``metrics.music.voicing.parallels``): 1 for none; 0 for a sample with no transition."""
    out = []
    for s in samples:
        g = sample_grid(s)
        p = parallels(g) if not _silent(g) else None
        out.append(0.0 if p is None or p.transitions == 0 else 1.0 - (p.fifths + p.octaves) / p.transitions)
    return out


def in_key(samples: Sequence) -> list[float]:
    """Fraction of notes in the scale of the sample's own Krumhansl-Schmuckler key."""
    out = []
    for s in samples:
        inside, notes = key_consistency(sample_grid(s))
        out.append(inside / notes if notes else 0.0)
    return out


def voice_ranges(samples: Sequence) -> list[float]:
    """1 - fraction of notes outside their voice's SATB range (``metrics.music.voicing.SATB_RANGES``)."""
    out = []
    for s in samples:
        bad, notes = range_violations(sample_grid(s))
        out.append(1.0 - bad / notes if notes else 0.0)
    return out


def cadence(samples: Sequence) -> list[float]:
    """The final-cadence score: 0.5 for the bass on the estimated key's tonic plus 0.5 for a
    final chord that is the tonic triad (``metrics.music.tonal.cadence_score``)."""
    out = []
    for s in samples:
        g = sample_grid(s)
        out.append(0.0 if _silent(g) else cadence_score(g))
    return out
