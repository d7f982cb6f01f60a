"""Music requests: pieces drawn from a music run, each returned as a standard MIDI file, a
piano-roll PNG (carrying the provenance record) and, where the ``fluidsynth`` binary and a
General MIDI SoundFont are installed, a WAV to listen to, all base64.

The files are made by the same writers as ``genforge sample RUN --out piece.mid|.png|.wav``
(``modalities.music.write_piece``), into a private temporary folder that is read back and
removed: no path comes from the request. Served options are those the music modality declares
minus the ones naming files (``prompt_midi``, ``melody``): ``num_samples``, ``temperature``,
``tempo`` and ``steps`` (16th steps; at most the server's ``max_tokens`` tokens). Not streamed:
a piece is listened to whole.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from genforge import GenforgeError


def steps_limit(entry, max_tokens: int) -> int:
    """The most 16th steps one request may ask for: ``max_tokens`` tokens (4 per step on the grid)."""
    from genforge.modalities.music import tokens_per_step

    return max(1, max_tokens // tokens_per_step(entry.run.tokenizer))


def draw(entry, options: dict[str, Any], generator, record: dict | None, hook: dict | None = None) -> dict[str, Any]:
    """``num_samples`` pieces: ``midi``, ``piano_roll_png`` and ``wav`` lists (base64; ``wav``
    entries null with ``audio_note`` saying why when FluidSynth is missing) and ``steps``, each
    piece's length in 16th steps. ``hook``: engine.stop_hook's, which ends the draw when the
    client has gone."""
    from genforge.modalities.music import tokens_per_step, write_piece
    from genforge.serve.wire import b64, from_library

    run, tok, n = entry.run, entry.run.tokenizer, options["num_samples"]
    steps, tempo = options.get("steps"), options.get("tempo") or 100.0
    length = {} if steps is None else {"max_new_tokens": steps * tokens_per_step(tok)}
    try:
        rows = run.model.sample(n, generator, prompts=[[tok.bos_id]] * n, temperature=options["temperature"],
                                **length, **(hook or {}))
    except GenforgeError as e:
        raise from_library(e) from None
    out: dict[str, Any] = {"midi": [], "piano_roll_png": [], "wav": [], "steps": [], "audio_note": None}
    with tempfile.TemporaryDirectory(prefix="genforge-serve-") as tmp:
        for i, row in enumerate(rows):
            stem = Path(tmp) / f"{entry.id}-{i + 1}"  # the piano roll's title
            out["midi"].append(b64(write_piece(tok, row, stem.with_suffix(".mid"), tempo).read_bytes()))
            out["piano_roll_png"].append(b64(_stamped_png(write_piece(tok, row, stem.with_suffix(".png"), tempo),
                                                          record)))
            out["steps"].append(len(tok.to_grid(row)))
            wav = None
            if out["audio_note"] is None:
                try:
                    wav = b64(write_piece(tok, row, stem.with_suffix(".wav"), tempo).read_bytes())
                except GenforgeError as e:  # no fluidsynth or no SoundFont: MIDI and PNG still come
                    out["audio_note"] = str(e)
            out["wav"].append(wav)
    return out


def _stamped_png(path: Path, record: dict | None) -> bytes:
    """The piano roll re-encoded with the provenance chunk (matplotlib writes it without one)."""
    from PIL import Image

    from genforge.serve.wire import png_bytes

    with Image.open(path, formats=["PNG"]) as im:
        im.load()
        return png_bytes(im, record)
