"""Music as tokens: the four-voice grid serialization and a REMI-like event tokenization.

``grid`` (for chorales): each 16th-note step is four tokens, soprano, alto, tenor, bass, in that
order (raster order, as Coconet's data are serialized for the Transformer baselines of Huang et
al., "Music Transformer", ICLR 2019). A voice's token is a pitch ``pN`` (a note struck on this
step), ``hold`` (the voice's previous note continues) or ``rest``. So one token is one voice at
one 16th: the "note" of the papers' note-wise NLL. Holding a note and repeating its pitch are
the same bijection of the JSB data (which carry no articulation), so a loss per token is
comparable with theirs.

``events`` (for any MIDI; after Huang & Yang 2020, "Pop Music Transformer", REMI): ``bar``
at every 16-step bar (4/4), ``posK`` (the 16th inside the bar, 0..15) before the notes that
start there, then ``pN dD`` per note (pitch, duration in 16ths, 1..MAX_DURATION). Instruments
are merged into one part.

``chorale`` (for music21's Bach chorales, :mod:`genforge.data.music_chorales`): the grid, with
one key token (``key_F#_minor``; 24 of them) right after ``<bos>``, and the fermatas as a flag in
the soprano's token: under a fermata the soprano is ``fpN``/``fhold`` instead of ``pN``/``hold``.
Why a flag and not an extra token: DeepBach feeds fermatas as a per-step channel beside the notes
(Hadjeres et al. 2017, ICML, Sec. 2.2); folding that bit into the step's first token keeps four
tokens per step (the voice of a position never shifts, windows keep their phase, and the
note-wise NLL stays one token per voice per step), and the model must say where phrases end as
it writes the soprano. The key token conditions a piece (``genforge sample --key``); it is not
a note and is left out of the note-wise NLL. A fermata over a soprano rest is not encoded.

All vocabularies are fixed (all 128 MIDI pitches), so a run's vocabulary never depends on
its data, and token ids of pitches are contiguous: transposing is adding to the ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genforge import GenforgeError
from genforge.data.music import REST, check_grid, grid_notes, held_onsets
from genforge.data.specials import DEFAULT_SPECIALS, SpecialIds

KINDS = ("grid", "events", "chorale")
STEPS_PER_BAR = 16
MAX_DURATION = 128  # 16ths (8 bars of 4/4); longer notes are cut to this


class MusicTokenizer(SpecialIds):
    """Token ids <-> music for one ``kind`` ("grid" or "events"); specials take ids 0..2."""

    specials = DEFAULT_SPECIALS

    def __init__(self, kind: str = "grid"):
        if kind not in KINDS:
            raise GenforgeError(f"unknown music tokenization '{kind}'; choose one of {', '.join(KINDS)}")
        from genforge.data.music_chorales import MODES, TONICS

        self.kind = kind
        grid_like = kind in ("grid", "chorale")
        head = ["rest", "hold"] if grid_like else ["bar", *(f"pos{k}" for k in range(STEPS_PER_BAR))]
        pitches = [f"p{p}" for p in range(128)]
        tail = [f"d{d}" for d in range(1, MAX_DURATION + 1)] if kind == "events" else []
        if kind == "chorale":  # key ids: key0 + 12 * mode + tonic pitch class
            tail = ["fhold", *(f"fp{p}" for p in range(128)), *(f"key_{t}_{m}" for m in MODES for t in TONICS)]
        self.itos = [*self.specials, *head, *pitches, *tail]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.pitch0 = self.stoi["p0"]  # id of MIDI pitch 0; pitch p is pitch0 + p
        self.fpitch0 = self.stoi.get("fp0")  # chorale: id of pitch 0 under a fermata
        self.key0 = self.stoi.get("key_C_major")  # chorale: id of the first key token

    @property
    def grid_like(self) -> bool:
        return self.kind in ("grid", "chorale")

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def save(self, path: Path) -> None:
        from genforge.atomic import atomic_write_text

        atomic_write_text(path, json.dumps({"genforge_music_tokens": self.kind}))

    # -- text form (previews, prompts as strings) -----------------------------------------
    def decode(self, ids) -> str:
        """Token names separated by spaces, specials left out."""
        return " ".join(self.itos[i] for i in ids if i >= len(self.specials))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[t] for t in text.split()]
        except KeyError as e:
            raise GenforgeError(f"{e.args[0]!r} is not a {self.kind} music token") from None

    def transpose_ids(self, ids: np.ndarray, k: int) -> np.ndarray:
        """``ids`` with every pitch token moved ``k`` semitones (the caller keeps them in 0..127)
        and, for chorales, the key token moved with them."""
        ids = np.asarray(ids)
        is_pitch = (ids >= self.pitch0) & (ids < self.pitch0 + 128)
        out = np.where(is_pitch, ids + k, ids)
        if self.kind == "chorale":
            out = np.where((ids >= self.fpitch0) & (ids < self.fpitch0 + 128), ids + k, out)
            rel = ids - self.key0
            is_key = (rel >= 0) & (rel < 24)
            out = np.where(is_key, self.key0 + rel // 12 * 12 + (rel % 12 + k) % 12, out)
        return out

    # -- chorale: keys and fermatas ---------------------------------------------------------
    def key_id(self, key: str) -> int:
        """The token of a key such as "D major" (see :func:`genforge.data.music_chorales.parse_key`)."""
        from genforge.data.music_chorales import MODES, parse_key

        if self.kind != "chorale":
            raise GenforgeError(f"this run's {self.kind} tokens carry no key; keys need data.music_tokens=chorale")
        pc, mode = parse_key(key)
        return self.key0 + 12 * MODES.index(mode) + pc

    def key_of(self, ids) -> str | None:
        """The key named by the first key token of ``ids`` ("F# minor"), None without one."""
        from genforge.data.music_chorales import MODES, key_name

        for i in ids if self.kind == "chorale" else ():
            if 0 <= i - self.key0 < 24:
                return key_name((i - self.key0) % 12, MODES[(i - self.key0) // 12])
        return None

    def meta_ids(self) -> list[int]:
        """Tokens that are not notes (the key tokens): left out of the note-wise NLL."""
        return list(range(self.key0, self.key0 + 24)) if self.kind == "chorale" else []

    def _steps(self, ids) -> np.ndarray:
        """Ids -> (T, 4) step rows of a grid-like piece: specials and key tokens dropped, a
        trailing partial step filled with rests."""
        meta = set(self.meta_ids())
        body = [int(i) for i in ids if i >= len(self.specials) and int(i) not in meta]
        body += [self.stoi["rest"]] * (-len(body) % 4)
        return np.asarray(body, dtype=np.int64).reshape(-1, 4)

    def fermatas(self, ids) -> np.ndarray:
        """(T,) bool: the steps whose soprano token carries the fermata flag (chorale tokens)."""
        steps = self._steps(ids)
        if self.kind != "chorale":
            return np.zeros(len(steps), dtype=bool)
        s = steps[:, 0]
        return (s == self.stoi["fhold"]) | ((s >= self.fpitch0) & (s < self.fpitch0 + 128))

    # -- grid ------------------------------------------------------------------------------
    def encode_grid(self, grid, onsets=None, fermata=None, key: str | None = None) -> list[int]:
        """(T, 4) grid -> 4T ids (S, A, T, B per step). Without ``onsets`` a repeated pitch is held.
        Chorale tokens: ``key`` ("F# minor") comes first and ``fermata`` (T,) bool flags the
        soprano; both optional (a prompt may have neither)."""
        if not self.grid_like:
            raise GenforgeError("this run tokenizes events, not four-voice grids")
        if (fermata is not None or key is not None) and self.kind != "chorale":
            raise GenforgeError("keys and fermatas need chorale tokens (data.music_tokens=chorale)")
        grid = check_grid(grid)
        onsets = held_onsets(grid) if onsets is None else np.asarray(onsets, dtype=bool).copy()
        if fermata is not None and len(grid) > 1:  # a fermata ends its note: the soprano strikes again after it
            f = np.asarray(fermata, dtype=bool)[:len(grid)]
            onsets[1:len(f), 0] |= f[:-1] & ~f[1:]
        rest, hold = self.stoi["rest"], self.stoi["hold"]
        ids = np.where(grid == REST, rest, np.where(onsets, self.pitch0 + grid, hold))
        # a hold after a rest (or at the start) has no note to continue: strike it instead
        prev = np.vstack([np.full((1, 4), REST), grid[:-1]])
        ids = np.where((ids == hold) & (prev != grid), self.pitch0 + grid, ids)
        if fermata is not None:  # the soprano under a fermata: pN -> fpN, hold -> fhold
            f = np.asarray(fermata, dtype=bool)[:len(ids)]
            s = ids[:len(f), 0]
            s[:] = np.where(f & (s == hold), self.stoi["fhold"], np.where(f & (s >= self.pitch0), s - self.pitch0
                            + self.fpitch0, s))
        head = [self.key_id(key)] if key is not None else []
        return head + ids.reshape(-1).tolist()

    def decode_grid(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """Ids -> (grid (T, 4), onsets (T, 4)); specials (and key tokens) are skipped, a trailing
        partial step is filled with rests, a ``hold`` with nothing to hold is a rest, and a
        fermata-flagged soprano is read as its note (MIDI has no fermata: see :meth:`fermatas`)."""
        steps = self._steps(ids)
        if self.kind == "chorale":  # fpN -> pN, fhold -> hold (in any voice: a sampled flag out of place)
            steps = np.where(steps == self.stoi["fhold"], self.stoi["hold"],
                             np.where(steps >= self.fpitch0, steps - self.fpitch0 + self.pitch0, steps))
        grid = np.full(steps.shape, REST, dtype=np.int64)
        onsets = np.zeros(steps.shape, dtype=bool)
        hold = self.stoi["hold"]
        for t, row in enumerate(steps):
            for v, i in enumerate(row):
                if i >= self.pitch0:
                    grid[t, v], onsets[t, v] = i - self.pitch0, True
                elif i == hold and t > 0:
                    grid[t, v] = grid[t - 1, v]
        return grid, onsets

    # -- events -----------------------------------------------------------------------------
    def encode_notes(self, notes) -> list[int]:
        """Notes [(part, pitch, start step, end step)] -> REMI-like ids (parts merged; a note
        longer than MAX_DURATION is cut to it)."""
        if self.kind != "events":
            raise GenforgeError("this run tokenizes four-voice grids, not events")
        out: list[int] = []
        bar, pos = -1, -1
        for _, pitch, start, end in sorted(notes, key=lambda n: (n[2], n[1], n[3])):
            while bar < start // STEPS_PER_BAR:
                bar, pos = bar + 1, -1
                out.append(self.stoi["bar"])
            if start % STEPS_PER_BAR != pos:
                pos = start % STEPS_PER_BAR
                out.append(self.stoi[f"pos{pos}"])
            out += [self.pitch0 + int(pitch), self.stoi[f"d{min(max(end - start, 1), MAX_DURATION)}"]]
        return out

    def decode_notes(self, ids) -> list[tuple[int, int, int, int]]:
        """Ids -> notes [(0, pitch, start, end)]; tokens out of grammar (a pitch without its
        duration, a duration without a pitch) are skipped."""
        notes, bar, pos, pitch = [], -1, 0, None
        for i in ids:
            name = self.itos[i] if 0 <= i < len(self.itos) else ""
            if name == "bar":
                bar, pos, pitch = bar + 1, 0, None
            elif name.startswith("pos"):
                pos, pitch = int(name[3:]), None
            elif name.startswith("p"):
                pitch = int(name[1:])
            elif name.startswith("d") and pitch is not None:
                start = max(bar, 0) * STEPS_PER_BAR + pos
                notes.append((0, pitch, start, start + int(name[1:])))
                pitch = None
        return notes

    # -- either ------------------------------------------------------------------------------
    def to_notes(self, ids) -> list[tuple[int, int, int, int]]:
        """Ids of either kind -> notes [(part, pitch, start, end)] (grid parts are the 4 voices)."""
        if self.grid_like:
            return grid_notes(*self.decode_grid(ids))
        return self.decode_notes(ids)

    def to_grid(self, ids) -> np.ndarray:
        """Ids of either kind -> a (T, 4) grid (events: voices by pitch order)."""
        from genforge.data.music import notes_to_grid

        if self.grid_like:
            return self.decode_grid(ids)[0]
        return notes_to_grid(self.decode_notes(ids), 1)[0]


def load_music_tokenizer(raw: dict) -> MusicTokenizer:
    return MusicTokenizer(raw["genforge_music_tokens"])
