"""Music output files beyond MIDI: a piano-roll PNG (matplotlib), a WAV (the ``fluidsynth``
binary with a General MIDI SoundFont), a MusicXML score (music21). All written atomically;
optional tools are found lazily and their absence is a one-line error."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from genforge import GenforgeError
from genforge.atomic import atomic_write, atomic_write_bytes
from genforge.data.music import REST, STEPS_PER_QUARTER, VOICES, notes_to_midi, require

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2")
VOICE_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:blue")


def piano_roll_png(notes, path, title: str = "") -> Path:
    """Notes [(part, pitch, start, end)] drawn as a piano roll (16th steps across, MIDI pitch
    up), one colour per part; bar lines every 16 steps."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    end = max((n[3] for n in notes), default=16)
    fig = Figure(figsize=(max(6.0, min(24.0, end / 16)), 4), dpi=100)
    ax = fig.add_subplot()
    for part, pitch, s, e in notes:
        ax.broken_barh([(s, e - s)], (pitch - 0.4, 0.8), color=VOICE_COLORS[part % 4])
    for bar in range(0, end + 1, 16):
        ax.axvline(bar, color="0.85", lw=0.5, zorder=0)
    ax.set_xlim(0, end)
    ax.set_xlabel("16th-note step")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def soundfont() -> Path:
    for sf in SOUNDFONTS:
        if Path(sf).is_file():
            return Path(sf)
    raise GenforgeError("no General MIDI SoundFont found (looked for "
                        f"{SOUNDFONTS[0]}); install Debian's fluid-soundfont-gm to write .wav")


def wav_tools() -> tuple[str, Path]:
    """The ``fluidsynth`` binary and a General MIDI SoundFont, or a one-line error naming the
    Debian packages; `genforge sample --out x.wav` asks before sampling, so nothing is wasted."""
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise GenforgeError("the fluidsynth binary is not installed, so .wav cannot be written; "
                            "install it (apt install fluidsynth fluid-soundfont-gm) or write .mid")
    return binary, soundfont()


def render_wav(notes, path, tempo_bpm: float, parts: list[str] | None = None, sample_rate: int = 44100) -> Path:
    """Render notes to a WAV with the ``fluidsynth`` binary (Debian's ``fluidsynth`` and
    ``fluid-soundfont-gm``)."""
    binary, sf = wav_tools()
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        notes_to_midi(notes, mid, tempo_bpm, parts, program=52 if parts and len(parts) == 4 else 0)
        try:
            subprocess.run([binary, "-ni", "-q", "-F", str(wav), "-r", str(sample_rate), str(sf), str(mid)],
                           check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            err = getattr(e, "stderr", b"") or b""
            raise GenforgeError(f"fluidsynth failed to render {path}: {err.decode(errors='replace')[-200:]}") from None
        atomic_write_bytes(path, wav.read_bytes())
    return Path(path)


def musicxml(grid: np.ndarray, path, onsets=None, fermata=None, tempo: float | None = None) -> Path:
    """A four-part score (soprano and alto treble, tenor and bass clefs left to music21) of a
    (T, 4) grid, written as MusicXML; ``fermata`` (T,) bool (chorale tokens: the steps under a
    soprano fermata) puts a fermata on the note each voice sounds where a flagged stretch begins.
    ``tempo`` (quarter notes per minute) is written as a metronome mark over the soprano, so a
    notation program plays the score at the tempo the MIDI and WAV of the same piece have."""
    from genforge.data.music import grid_notes

    require("music21")
    from music21 import expressions, meter, note, stream
    from music21 import tempo as m21tempo

    score = stream.Score()
    notes = grid_notes(grid, onsets)
    T = len(grid)
    marks = np.zeros(T + 1, dtype=bool)  # (T + 1,): the first step of each flagged stretch
    if fermata is not None:
        f = np.asarray(fermata, dtype=bool)[:T]
        marks[:len(f)] = f & ~np.r_[False, f[:-1]]
    for v, name in enumerate(VOICES):
        part = stream.Part(id=name)
        part.partName = name.capitalize()
        part.insert(0, meter.TimeSignature("4/4"))
        if tempo is not None and v == 0:
            part.insert(0, m21tempo.MetronomeMark(number=tempo, referent=note.Note(type="quarter")))
        t = 0
        for _, pitch, s, e in sorted((n for n in notes if n[0] == v), key=lambda n: n[2]):  # by start step
            if s > t:
                part.insert(t / STEPS_PER_QUARTER, note.Rest(quarterLength=(s - t) / STEPS_PER_QUARTER))
            n = note.Note(pitch, quarterLength=(e - s) / STEPS_PER_QUARTER)
            if marks[s:e].any():
                n.expressions.append(expressions.Fermata())
            part.insert(s / STEPS_PER_QUARTER, n)
            t = e
        if t < T:
            part.insert(t / STEPS_PER_QUARTER, note.Rest(quarterLength=(T - t) / STEPS_PER_QUARTER))
        score.insert(0, part)
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(score.write("musicxml", fp=str(Path(tmp) / "score.musicxml"), makeNotation=True))
        atomic_write_bytes(path, written.read_bytes())
    return Path(path)


def empty(grid: np.ndarray) -> bool:
    return not len(grid) or bool((np.asarray(grid) == REST).all())
