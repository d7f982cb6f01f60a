"""The music part of `genforge report`: for each music run, its music metrics beside real Bach,
piano rolls of its newest samples and one of them to listen to, all inside the page.

A run is music when its ``tokenizer.json`` is a music tokenizer. Its held-out note-wise NLL is in
the report's metrics table with every other eval key; here are:

- the music metric table of :mod:`genforge.metrics.music.table` as `genforge eval` stored it in
  ``eval.json``: the samples' value beside ``floor_*``, the same number measured on held-out
  real chorales (the data's own floor);
- piano rolls (:func:`genforge.data.music_render.piano_roll_png`) of the newest
  :data:`MAX_ROLLS` MIDI files in ``RUN/samples``, as inline PNGs;
- the newest sample's opening (:data:`AUDIO_STEPS` 16th steps) rendered with FluidSynth as a
  WAV inside an ``<audio>`` element (a ``data:`` URL: the page stays one file with no network);
  without the ``fluidsynth`` binary or a SoundFont, one line says so.
"""

from __future__ import annotations

import base64
import json
import tempfile
from html import escape
from pathlib import Path

from genforge import GenforgeError

MAX_ROLLS = 3
AUDIO_STEPS = 64  # 16 beats: about 10 s at 100 bpm, ~0.9 MB of 22 kHz WAV (1.2 MB as base64)
AUDIO_RATE = 22050
TEMPO = 100.0
MIDI = (".mid", ".midi")


def is_music_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a music run (its tokenizer.json is a music tokenizer)."""
    try:
        return "genforge_music_tokens" in json.loads((Path(run_dir) / "tokenizer.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def newest_pieces(folder: Path, n: int = MAX_ROLLS) -> list[Path]:
    """The ``n`` newest MIDI files in ``folder`` (newest first)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MIDI]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)[:n]


def metric_rows(result: dict) -> list[tuple[str, str, object, object]]:
    """(key, what it measures, samples' value, real Bach's value) for each music metric in an
    eval result, in the table's order; a value absent from the result is None."""
    from genforge.metrics.music.reference import _eval_key
    from genforge.metrics.music.table import ROWS

    rows = []
    for key, what in ROWS:
        k = _eval_key(key)
        if k in result or f"floor_{k}" in result:
            rows.append((k, what, result.get(k), result.get(f"floor_{k}")))
    return rows


def _metrics_table(result: dict | None, path: Path) -> list[str]:
    from genforge.report import format_value

    if result is None:
        return [f'<p class="note">not evaluated: run genforge eval {escape(str(path))} for the music metrics</p>']
    rows = metric_rows(result)
    if not rows:
        return ['<p class="note">eval.json holds no music metrics (the NLL alone is in the table above)</p>']
    out = ["<table>", "<tr><th>metric</th><th>samples</th><th>real Bach (held out)</th><th>what it measures</th></tr>"]
    for key, what, mine, bach in rows:
        cells = [format_value(key, v) if v is not None else "\u2014" for v in (mine, bach)]
        out.append(f"<tr><td>{escape(key)}</td>" + "".join(f'<td class="num">{escape(c)}</td>' for c in cells)
                   + f"<td>{escape(what)}</td></tr>")
    return [*out, "</table>"]


def _rolls(pieces: list[Path], name: str) -> list[str]:
    from genforge.data.music import read_midi_notes
    from genforge.data.music_render import piano_roll_png

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for piece in pieces:
            try:
                notes, _ = read_midi_notes(piece)
                png = piano_roll_png(notes, Path(tmp) / "roll.png", title=piece.name)
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                out.append(f'<div><img alt="{escape(name)} {escape(piece.name)} piano roll" '
                           f'src="data:image/png;base64,{data}"></div>')
            except GenforgeError as e:
                out.append(f'<p class="note">{escape(piece.name)}: {escape(str(e))}</p>')
            except ImportError:
                return [*out, '<p class="note">matplotlib is not installed: no piano rolls</p>']
    return out


def audio_element(piece: Path) -> str:
    """An ``<audio>`` element holding the opening of ``piece`` as a base64 WAV, or a one-line
    note saying why there is none (no fluidsynth, no SoundFont, an unreadable file)."""
    from genforge.data.music import read_midi_notes
    from genforge.data.music_render import render_wav

    try:
        notes, n_parts = read_midi_notes(piece)
        notes = [(k, p, s, min(e, AUDIO_STEPS)) for k, p, s, e in notes if s < AUDIO_STEPS]
        parts = ["Soprano", "Alto", "Tenor", "Bass"] if n_parts == 4 else None
        with tempfile.TemporaryDirectory() as tmp:
            wav = render_wav(notes, Path(tmp) / "piece.wav", TEMPO, parts, sample_rate=AUDIO_RATE).read_bytes()
    except GenforgeError as e:
        return f'<p class="note">no audio: {escape(str(e))}</p>'
    data = base64.b64encode(wav).decode("ascii")
    return (f"<p>listen: the first {AUDIO_STEPS} 16th steps of {escape(piece.name)} (FluidSynth, {TEMPO:g} bpm)</p>"
            f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>')


def music_section(runs) -> list[str]:
    """The "Music" section for the music runs among ``runs`` (RunView); empty when there are none."""
    music = [r for r in runs if is_music_run(r.path)]
    if not music:
        return []
    out = ["<h2>Music</h2>"]
    for r in music:
        out.append(f"<h3>{escape(r.name)}</h3>")
        out += _metrics_table(r.eval, r.path)
        pieces = newest_pieces(r.path / "samples")
        if not pieces:
            out.append(f'<p class="note">no MIDI samples yet: run genforge sample {escape(str(r.path))}</p>')
            continue
        out += _rolls(pieces, r.name)
        out.append(audio_element(pieces[0]))
    return out
