"""Symbolic music as four-voice grids: MIDI in and out, and the sources a music run reads.

The shared in-memory form of a chorale (or any piece) is a numpy int array ``grid`` of shape
(T, 4): the MIDI pitch of soprano, alto, tenor and bass (columns 0..3) at each 16th-note step,
-1 for a rest. An optional bool array ``onsets`` (T, 4) says where a note is struck; without it
a pitch that repeats in a voice is one held note (the JSB grid carries no articulation, so that
is how the papers read it too).

Sources:

- ``jsb``: the JSB Chorales at 16th notes in the split of Boulanger-Lewandowski et al. (2012)
  as prepared for Coconet (Huang et al. 2017): train/valid/test = 229/76/77 chorales,
  ``Jsb16thSeparated.json`` (rests are -1). Found through :func:`genforge.data.locate.locate`.
- ``bach``: the 433 Bach chorales bundled in the music21 wheel (MusicXML), parsed once and
  cached as grids with each chorale's key and soprano fermatas (:mod:`genforge.data.music_chorales`);
  only four-part chorales are kept (the others are counted and reported).
- any folder of ``.mid``/``.midi`` files, read with pretty_midi: its note-level API (notes with
  start/end in seconds per instrument) is what a grid needs, and Magenta's tools build on it;
  mido (one level lower: messages) is used only as the independent reader in the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge import GenforgeError

VOICES = ("soprano", "alto", "tenor", "bass")
REST = -1
STEPS_PER_QUARTER = 4  # the grid is in 16th notes
DEFAULT_TEMPO = 100.0  # quarter notes per minute when writing MIDI
# tempi a written piece may have: MIDI stores microseconds per quarter in 24 bits (at least
# 3.58 bpm), and far past 1000 bpm the tempo rounds to 0, which no MIDI reader can load
TEMPO_RANGE = (4.0, 1000.0)

JSB_FILE = "jsb-chorales/Jsb16thSeparated.json"
JSB_URL = "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/master/Jsb16thSeparated.json"
JSB_SHA256 = "79294cc374f9252e95ef4b703161524c1c53dc1f712c236f00f1c1f5d54af5a7"
JSB_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # genforge's name -> the file's
MIDI_SUFFIXES = {".mid", ".midi"}

MUSIC_DATASETS = {
    "jsb": "JSB Chorales, 4 voices on a 16th-note grid: 229 train / 76 valid / 77 test chorales "
           "($GENFORGE_DATA/jsb-chorales, or download)",
    "bach": "the 433 Bach chorales bundled with music21 with keys and fermatas (four-part ones kept; "
            "seeded splits; data.music_tokens=chorale writes the keys and fermatas as tokens)",
}
INSTALL_HINT = "pip install 'genforge[music]'"


def require(module: str):
    """Import an optional music library, or a one-line error naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GenforgeError(f"{module} is not installed; music needs it: {INSTALL_HINT}") from None


# -- grids -------------------------------------------------------------------------------
def check_grid(grid) -> np.ndarray:
    """``grid`` as an int64 (T, 4) array of MIDI pitches 0..127 or -1, or a one-line error."""
    arr = np.asarray(grid)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise GenforgeError(f"a music grid is (steps, 4 voices); got shape {arr.shape}")
    arr = arr.astype(np.int64)
    bad = (arr < REST) | (arr > 127)
    if bad.any():
        raise GenforgeError(f"grid pitches must be MIDI 0..127 or -1 (rest); found {int(arr[bad][0])}")
    return arr


def held_onsets(grid: np.ndarray) -> np.ndarray:
    """Onsets (T, 4) bool when a repeated pitch is held: a note starts where the pitch changes."""
    onsets = np.ones(grid.shape, dtype=bool)
    onsets[1:] = grid[1:] != grid[:-1]
    return onsets & (grid != REST)


def grid_notes(grid: np.ndarray, onsets: np.ndarray | None = None) -> list[tuple[int, int, int, int]]:
    """(voice, pitch, start step, end step) of every note in ``grid``, held repeats merged unless
    ``onsets`` marks a new strike."""
    grid = check_grid(grid)
    onsets = held_onsets(grid) if onsets is None else (np.asarray(onsets, dtype=bool) & (grid != REST))
    notes = []
    T = len(grid)
    for v in range(4):
        t = 0
        while t < T:
            p = grid[t, v]
            if p == REST:
                t += 1
                continue
            end = t + 1
            while end < T and grid[end, v] == p and not onsets[end, v]:
                end += 1
            notes.append((v, int(p), t, end))
            t = end
    return notes


def check_tempo(tempo_bpm: float, name: str = "tempo") -> float:
    """``tempo_bpm`` if a MIDI file can carry it (:data:`TEMPO_RANGE`), else a one-line error."""
    lo, hi = TEMPO_RANGE
    if not lo <= tempo_bpm <= hi:  # NaN fails too
        raise GenforgeError(f"{name} must be between {lo:g} and {hi:g} quarter notes per minute, got {tempo_bpm}")
    return tempo_bpm


def grid_to_midi(grid, path, tempo_bpm: float = DEFAULT_TEMPO, onsets=None, program: int = 52) -> Path:
    """Write ``grid`` (T, 4) as a standard MIDI file at ``path`` (atomically): one instrument per
    voice (named Soprano..Bass, General MIDI ``program``, default 52 = choir aahs), a 16th note
    lasting 60 / tempo_bpm / 4 seconds."""
    return notes_to_midi(grid_notes(grid, onsets), path, tempo_bpm, [v.capitalize() for v in VOICES], program)


def notes_to_midi(notes, path, tempo_bpm: float = DEFAULT_TEMPO, parts: list[str] | None = None,
                  program: int = 0) -> Path:
    """Write ``notes`` [(part, pitch, start step, end step)] as a MIDI file (atomically), one
    instrument per part (named by ``parts``; default one per part index used)."""
    from genforge.atomic import atomic_write

    pretty_midi = require("pretty_midi")
    check_tempo(tempo_bpm)
    step = 60.0 / tempo_bpm / STEPS_PER_QUARTER
    parts = parts or [f"Part {k + 1}" for k in range(max((n[0] for n in notes), default=0) + 1)]
    pm = pretty_midi.PrettyMIDI(initial_tempo=float(tempo_bpm))
    tracks = [pretty_midi.Instrument(program=program, name=name) for name in parts]
    for k, pitch, start, end in notes:
        tracks[k].notes.append(pretty_midi.Note(velocity=80, pitch=int(pitch), start=start * step, end=end * step))
    pm.instruments.extend(tracks)
    path = Path(path)
    atomic_write(path, pm.write)
    return path


def load_midi(path):
    """A pretty_midi.PrettyMIDI, or a one-line error saying why the file cannot be read."""
    pretty_midi = require("pretty_midi")
    try:
        return pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # noqa: BLE001 - mido/pretty_midi raise many kinds for broken files
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
        why = "the file is empty" if empty else f"{type(e).__name__}: {e}".rstrip(": ")
        raise GenforgeError(f"cannot read MIDI file {path}: {why}; give a standard MIDI file (.mid)") from None


def _steps(pm, seconds: float) -> int:
    """Seconds -> the nearest 16th-note step, through the file's own ticks (tempo changes kept)."""
    return int(round(pm.time_to_tick(seconds) * STEPS_PER_QUARTER / pm.resolution))


def read_midi_notes(path) -> tuple[list[tuple[int, int, int, int]], int]:
    """(notes [(part, pitch, start step, end step)], number of parts) of a MIDI file, quantized to
    16th notes through the file's own ticks; parts are its pitched instruments that hold notes
    (drums left out); every note lasts at least one step."""
    pm = load_midi(path)
    parts = [i for i in pm.instruments if not i.is_drum and i.notes]
    notes = []
    for k, inst in enumerate(parts):
        for n in inst.notes:
            s = _steps(pm, n.start)
            notes.append((k, int(n.pitch), s, max(s + 1, _steps(pm, n.end))))
    return sorted(notes, key=lambda n: (n[2], n[1], n[0])), len(parts)


def notes_to_grid(notes, n_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """(grid (T, 4), onsets (T, 4)) of quantized notes. With exactly four parts each is one voice
    (in order: soprano, alto, tenor, bass; where one holds a chord its highest note is kept);
    otherwise the voices are taken by pitch order at each step: highest = soprano, lowest = bass,
    then alto and tenor from the top."""
    if not notes:
        return np.zeros((0, 4), dtype=np.int64), np.zeros((0, 4), dtype=bool)
    T = max(e for _, _, _, e in notes)
    grid, onsets = np.full((T, 4), REST, dtype=np.int64), np.zeros((T, 4), dtype=bool)
    if n_parts == 4:
        for k, pitch, s, e in sorted(notes, key=lambda n: (n[2], n[1])):  # higher pitch written last
            grid[s:e, k] = pitch
            onsets[s:e, k] = False
            onsets[s, k] = True
        return grid, onsets
    sounding: list[dict[int, bool]] = [{} for _ in range(T)]  # step -> pitch -> struck here
    for _, pitch, s, e in notes:
        for t in range(s, e):
            sounding[t][pitch] = sounding[t].get(pitch, False) or t == s
    for t, here in enumerate(sounding):
        ps = sorted(here, reverse=True)
        slots = {1: [0], 2: [0, 3], 3: [0, 1, 3]}.get(len(ps), [0, 1, 2, 3])
        chosen = ps[:3] + ps[-1:] if len(ps) > 4 else ps
        for v, p in zip(slots, chosen, strict=False):
            grid[t, v], onsets[t, v] = p, here[p]
    return grid, onsets


def read_midi(path) -> tuple[np.ndarray, np.ndarray]:
    """(grid (T, 4), onsets (T, 4)) of a MIDI file (see :func:`notes_to_grid`)."""
    return notes_to_grid(*read_midi_notes(path))


def read_midi_grid(path) -> np.ndarray:
    """The (T, 4) grid of a MIDI file (see :func:`read_midi`), -1 = rest."""
    return read_midi(path)[0]


# -- reports -----------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a loader left out and why, with examples, as :class:`genforge.data.smiles.Cleaned`."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def reject(self, reason: str, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(example)

    def text(self, source: str, kept: int) -> str | None:
        if not self.counts:
            return None
        parts = [f"{reason}: {n} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items()]
        return f"{source}: kept {kept} pieces, left out " + "; ".join(parts)


# -- sources -----------------------------------------------------------------------------
def jsb_file() -> Path:
    from genforge.data.locate import locate

    return locate(JSB_FILE, JSB_URL, JSB_SHA256)


def load_jsb(path: Path | None = None) -> dict[str, list[np.ndarray]]:
    """The JSB splits ``train``/``val``/``test`` as lists of (T, 4) grids."""
    path = jsb_file() if path is None else Path(path)
    try:
        raw = json.loads(path.read_text())
        return {ours: [check_grid(c) for c in raw[theirs]] for ours, theirs in JSB_SPLITS.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenforgeError(f"cannot read the JSB chorales {path} ({type(e).__name__}: {e}); "
                            f"expected a JSON object with {', '.join(JSB_SPLITS.values())}") from None


def score_to_grid(score) -> np.ndarray | None:
    """A music21 score with four parts -> (T, 4) grid (a chord keeps its top note); None otherwise."""
    parts = list(score.parts)
    if len(parts) != 4:
        return None
    length = int(round(float(score.highestTime) * STEPS_PER_QUARTER))
    grid = np.full((max(length, 1), 4), REST, dtype=np.int64)
    for v, part in enumerate(parts):
        for n in part.flatten().notes:
            s = int(round(float(n.offset) * STEPS_PER_QUARTER))
            e = max(s + 1, int(round(float(n.offset + n.quarterLength) * STEPS_PER_QUARTER)))
            grid[s:e, v] = max(p.midi for p in n.pitches)
    return grid


def load_midi_folder(folder, max_steps: int | None = None) -> tuple[list[str], list, LoadReport]:
    """(names, pieces, report) of every MIDI file under ``folder``: each piece is its
    ``(notes, n_parts)`` (see :func:`read_midi_notes`). Unreadable files, files with no notes and (with ``max_steps``) pieces
    longer than that many 16th steps are counted in the report with examples, never dropped silently."""
    folder = Path(folder).expanduser()
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    if not files:
        raise GenforgeError(f"{folder} holds no .mid or .midi files")
    names, pieces, report = [], [], LoadReport()
    for f in files:
        rel = str(f.relative_to(folder))
        try:
            notes, n_parts = read_midi_notes(f)
        except GenforgeError:
            report.reject("unreadable MIDI files", rel)
            continue
        if not notes:
            report.reject("files with no notes", rel)
            continue
        steps = max(e for *_, e in notes)
        if max_steps is not None and steps > max_steps:
            report.reject(f"pieces longer than {max_steps} 16th steps", f"{rel} ({steps})")
            continue
        names.append(rel)
        pieces.append((notes, n_parts))
    return names, pieces, report


# -- augmentation ------------------------------------------------------------------------
def voice_ranges(grids) -> np.ndarray:
    """(4, 2) lowest and highest pitch each voice sings across ``grids`` (rests ignored)."""
    flat = np.concatenate([np.asarray(g) for g in grids])
    out = np.zeros((4, 2), dtype=np.int64)
    for v in range(4):
        sung = flat[:, v][flat[:, v] != REST]
        out[v] = (sung.min(), sung.max()) if len(sung) else (0, 127)
    return out


def allowed_shifts(grid: np.ndarray, ranges: np.ndarray, max_shift: int) -> list[int]:
    """Transpositions in [-max_shift, max_shift] semitones that keep every voice of ``grid``
    inside its range (0 is always allowed)."""
    out = []
    for k in range(-max_shift, max_shift + 1):
        ok = True
        for v in range(4):
            sung = grid[:, v][grid[:, v] != REST]
            if len(sung) and (sung.min() + k < ranges[v, 0] or sung.max() + k > ranges[v, 1]):
                ok = False
                break
        if ok:
            out.append(k)
    return out or [0]


def transpose(grid: np.ndarray, k: int) -> np.ndarray:
    """``grid`` moved by ``k`` semitones; rests stay rests."""
    return np.where(grid == REST, REST, grid + k)
