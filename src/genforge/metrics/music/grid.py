"""The four-voice grid every music metric reads, its notes, and grid files.

A piece is a numpy int array of shape (T, 4): the MIDI pitch of soprano, alto, tenor and
bass (columns 0..3) at each 16th-note step, -1 for a rest (the convention of
``genforge.data.music`` and of the JSB Chorales file, Boulanger-Lewandowski et al. 2012).

A grid cannot tell a held note from the same pitch struck again, so a **note** here is a
maximal run of one pitch in one voice: a new note starts when the pitch changes or after a
rest (the reading Coconet's and Music Transformer's JSB numbers share).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from genforge import GenforgeError
from genforge.data.music import REST, STEPS_PER_QUARTER, VOICES  # the shared grid convention

__all__ = ["REST", "STEPS_PER_QUARTER", "VOICES", "Notes", "as_grid", "check_grids", "grid_notes",
           "note_count", "read_grid_files", "read_grids", "voice_notes"]

GRID_SUFFIXES = (".mid", ".midi", ".npy", ".json")


class Notes(NamedTuple):
    """The notes of one voice, in time order: three int arrays of equal length (n,)."""

    onset: np.ndarray     # step the note starts at
    duration: np.ndarray  # steps it lasts (>= 1)
    pitch: np.ndarray     # MIDI pitch


def as_grid(sample: Any, what: str = "piece") -> np.ndarray:
    """``sample`` (array, nested list or tensor of shape (T, 4)) as an int64 (T, 4) grid;
    NaN counts as a rest (-1). Anything else is a one-line GenforgeError."""
    if hasattr(sample, "detach"):  # a torch tensor, without importing torch here
        sample = sample.detach().cpu().numpy()
    try:
        arr = np.asarray(sample, dtype=np.float64)
    except (TypeError, ValueError):
        raise GenforgeError(f"{what}: not a (T, 4) grid of MIDI pitches (-1 = rest)") from None
    if arr.ndim != 2 or arr.shape[1] != len(VOICES) or arr.shape[0] == 0:
        raise GenforgeError(f"{what}: a grid has shape (T, 4) (soprano, alto, tenor, bass per 16th), "
                            f"got {tuple(arr.shape)}")
    arr = np.where(np.isnan(arr), REST, arr)
    if np.any(arr != np.round(arr)) or arr.min() < REST or arr.max() > 127:
        raise GenforgeError(f"{what}: grid values must be whole MIDI pitches 0..127 or -1 for a rest")
    return arr.astype(np.int64)


def voice_notes(voice: np.ndarray) -> Notes:
    """Notes of one voice's column (T,): a note starts where the pitch differs from the step
    before (or the step before is a rest) and lasts while it stays the same."""
    voice = np.asarray(voice, dtype=np.int64)
    sounding = voice != REST
    prev = np.concatenate([[REST], voice[:-1]])
    starts = np.flatnonzero(sounding & (voice != prev))
    # a note ends where the next note starts or where its voice stops sounding
    changes = np.flatnonzero(np.concatenate([voice[1:] != voice[:-1], [True]])) + 1
    ends = changes[np.searchsorted(changes, starts, side="right")]
    return Notes(starts, ends - starts, voice[starts])


def grid_notes(grid: np.ndarray) -> list[Notes]:
    """The notes of each of the four voices (soprano first)."""
    return [voice_notes(grid[:, v]) for v in range(grid.shape[1])]


def note_count(grid: np.ndarray) -> int:
    return int(sum(len(n.onset) for n in grid_notes(grid)))


# --------------------------------------------------------------------------- files


def _grids_from_array(arr: Any, name: str) -> list[np.ndarray]:
    """One (T, 4) grid, or several: an (N, T, 4) array or a list of (T, 4) lists."""
    several = (isinstance(arr, np.ndarray) and arr.ndim == 3) or (
        isinstance(arr, list) and bool(arr) and isinstance(arr[0], list) and bool(arr[0])
        and isinstance(arr[0][0], list))
    if several:
        return [as_grid(g, f"{name} piece {i + 1}") for i, g in enumerate(arr)]
    return [as_grid(arr, name)]


def read_grids(path: str | Path) -> list[np.ndarray]:
    """The pieces in one file: a MIDI file (one piece, through ``genforge.data.music``), a
    ``.npy`` array of shape (T, 4) or (N, T, 4), or a ``.json`` list of [s, a, t, b] rows
    (one piece) or of such lists (several). Unreadable files are one-line GenforgeErrors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GRID_SUFFIXES:
        raise GenforgeError(f"{path}: music metrics read {', '.join(GRID_SUFFIXES)} files, not '{suffix or path.name}'")
    if not path.is_file():
        raise GenforgeError(f"{path}: no such file")
    if suffix in (".mid", ".midi"):
        try:
            from genforge.data.music import read_midi_grid
        except ImportError:
            raise GenforgeError(f"{path}: reading MIDI needs genforge.data.music and pretty_midi: "
                                "pip install 'genforge[music]'") from None
        try:
            grid = read_midi_grid(path)
        except GenforgeError:
            raise
        except Exception as e:  # a corrupt MIDI file: pretty_midi/mido raise many kinds
            raise GenforgeError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from None
        if len(grid) == 0:  # was "a grid has shape (T, 4) ..., got (0, 4)"
            raise GenforgeError(f"{path} holds no notes (drum tracks are not read): nothing to measure")
        return [as_grid(grid, str(path))]
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise GenforgeError(f"{path}: not a readable {suffix} grid ({type(e).__name__}: {e})") from None
    return _grids_from_array(arr, str(path))


def read_grid_files(paths: Sequence[str | Path]) -> tuple[list[np.ndarray], list[str]]:
    """Every piece of every file, and a label per piece ("FILE" or "FILE#k")."""
    if not paths:
        raise GenforgeError("name at least one file of samples (.mid, .npy or .json grids)")
    grids, labels = [], []
    for p in paths:
        pieces = read_grids(p)
        grids += pieces
        labels += [str(p)] if len(pieces) == 1 else [f"{p}#{i + 1}" for i in range(len(pieces))]
    return grids, labels


def check_grids(grids: Iterable[Any], what: str = "piece") -> list[np.ndarray]:
    out = [as_grid(g, f"{what} {i + 1}") for i, g in enumerate(grids)]
    if not out:
        raise GenforgeError(f"no {what}s to measure")
    return out
