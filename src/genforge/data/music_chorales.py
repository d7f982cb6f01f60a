"""The Bach chorales music21 ships (433 MusicXML files), with each chorale's key and fermatas.

A :class:`Chorale` is the (T, 4) grid of :mod:`genforge.data.music` plus its key and the soprano
fermatas, which in the chorales mark the phrase ends. DeepBach (Hadjeres, Pachet & Nielsen
2017, "DeepBach: a Steerable Model for Bach Chorales Generation", ICML, Sec. 2.2) gives its
model the fermatas as a metadata channel: one bool per 16th step; :class:`Chorale.fermata` is
that channel. (Coconet's JSB data carry neither keys nor fermatas, which is why the ``jsb``
source has none.) How they become tokens: :mod:`genforge.data.music_tokens`, kind ``chorale``.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genforge import GenforgeError
from genforge.data.music import STEPS_PER_QUARTER, LoadReport, require, score_to_grid

# Keys are named by pitch class (enharmonics merged: Db major is "C# major"), so the 24 key tokens
# of the chorale serialization are a fixed set and transposing a key is adding to its pitch class.
TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def parse_key(text: str) -> tuple[int, str]:
    """"D major", "f# minor", "Bb minor", "Eb" (major) -> (tonic pitch class, mode), or a one-line error."""
    words = text.strip().split()
    if not 1 <= len(words) <= 2 or words[0][:1].upper() not in _LETTERS or \
            (len(words) == 2 and words[1].lower() not in MODES) or \
            any(c not in "#b" for c in words[0][1:]):
        raise GenforgeError(f"cannot read the key {text!r}; write a tonic and a mode, e.g. 'D major' or 'F# minor'")
    pc = _LETTERS[words[0][0].upper()] + words[0][1:].count("#") - words[0][1:].count("b")
    return pc % 12, (words[1].lower() if len(words) == 2 else "major")


def key_name(pc: int, mode: str) -> str:
    return f"{TONICS[pc % 12]} {mode}"


@dataclass
class Chorale:
    """One music21 chorale: ``grid`` (T, 4); ``key`` as "F# minor"; ``key_source`` says where the
    key came from ("score": the file states key and mode; "signature+analysis": the file has a
    key signature only and the Krumhansl-Schmuckler profile of music21's ``analyze('key')``
    chose between its major and relative-minor readings; "analysis": no signature, the analysis
    alone); ``fermata`` (T,) bool: the 16th steps under a soprano note that carries a fermata (in
    the chorales these mark the phrase ends)."""

    grid: np.ndarray
    key: str
    key_source: str
    fermata: np.ndarray


def _pc_mode(k) -> tuple[int, str]:
    return int(k.tonic.pitchClass), ("minor" if k.mode == "minor" else "major")


def chorale_key(score) -> tuple[str, str]:
    """(key, source) of a music21 score; see :class:`Chorale` for the three sources."""
    from music21 import key as m21key

    analysis = score.analyze("key")
    found = list(score.parts[0].recurse().getElementsByClass(m21key.KeySignature))[:1]
    if found and isinstance(found[0], m21key.Key) and found[0].mode in MODES:
        return key_name(*_pc_mode(found[0])), "score"
    if found:
        readings = [found[0].asKey("major"), found[0].asKey("minor")]
        ranked = [analysis, *analysis.alternateInterpretations]

        def corr(k):  # the analysis's correlation for this reading (-1 when not ranked)
            return max((r.correlationCoefficient for r in ranked if _pc_mode(r) == _pc_mode(k)), default=-1.0)

        return key_name(*_pc_mode(max(readings, key=corr))), "signature+analysis"
    return key_name(*_pc_mode(analysis)), "analysis"


def soprano_fermatas(score, steps: int) -> np.ndarray:
    """(steps,) bool: True on the 16th steps of soprano notes that carry a fermata."""
    from music21 import expressions

    out = np.zeros(steps, dtype=bool)
    for n in score.parts[0].flatten().notes:
        if any(isinstance(e, expressions.Fermata) for e in n.expressions):
            s = int(round(float(n.offset) * STEPS_PER_QUARTER))
            out[s:max(s + 1, int(round(float(n.offset + n.quarterLength) * STEPS_PER_QUARTER)))] = True
    return out


def parse_chorale(score) -> Chorale | None:
    """A four-part music21 score -> :class:`Chorale`; None when it has not four parts."""
    grid = score_to_grid(score)
    if grid is None:
        return None
    key, source = chorale_key(score)
    return Chorale(grid, key, source, soprano_fermatas(score, len(grid)))


def to_c(chorale: Chorale) -> Chorale:
    """``chorale`` moved to C major or A minor by the smallest shift (-6..5 semitones), as BachBot
    prepares its data (Liang et al. 2017, "Automatic Stylistic Composition of Bach Chorales with
    Deep LSTM", ISMIR)."""
    from genforge.data.music import transpose

    pc, mode = parse_key(chorale.key)
    shift = ((0 if mode == "major" else 9) - pc + 6) % 12 - 6
    return Chorale(transpose(chorale.grid, shift), key_name(pc + shift, mode), chorale.key_source, chorale.fermata)


def load_bach_chorales(progress: bool = True) -> tuple[list[str], list[Chorale], str | None]:
    """(names, chorales, report) of music21's bundled Bach chorales, parsed once and cached as
    an .npz keyed by the music21 version (parsing 433 MusicXML files takes minutes)."""
    from genforge.atomic import atomic_write
    from genforge.data.locate import cache_dir

    music21 = require("music21")
    key = hashlib.sha256(f"v2:{music21.__version__}".encode()).hexdigest()[:16]
    cached = cache_dir() / "music" / f"bach-music21-{key}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            names = [str(x) for x in z["names"]]
            grids = np.split(z["flat"], z["offsets"][1:-1])
            fermatas = np.split(z["fermata"], z["offsets"][1:-1])
            chorales = [Chorale(g, str(k), str(src), f)
                        for g, k, src, f in zip(grids, z["keys"], z["key_sources"], fermatas, strict=True)]
            report = str(z["report"]) or None
        return names, chorales, report
    from music21 import corpus

    names, chorales, bad = [], [], LoadReport()
    paths = sorted(corpus.getComposer("bach"))
    for i, p in enumerate(paths):
        if progress and sys.stderr.isatty():
            print(f"\rparsing music21 Bach chorales {i + 1}/{len(paths)}", end="", file=sys.stderr)
        try:
            chorale = parse_chorale(corpus.parse(str(p)))
        except Exception as e:  # noqa: BLE001 - a broken score is reported, not fatal
            bad.reject("scores music21 cannot parse", f"{Path(p).name} ({type(e).__name__})")
            continue
        if chorale is None:
            bad.reject("scores without exactly four parts", Path(p).name)
            continue
        names.append(Path(p).stem)
        chorales.append(chorale)
    report = bad.text("music21 Bach chorales", len(chorales)) or ""
    offsets = np.concatenate([[0], np.cumsum([len(c.grid) for c in chorales])])
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, lambda f: np.savez(
        f, names=np.array(names), flat=np.concatenate([c.grid for c in chorales]), offsets=offsets,
        fermata=np.concatenate([c.fermata for c in chorales]), keys=np.array([c.key for c in chorales]),
        key_sources=np.array([c.key_source for c in chorales]), report=np.array(report)))
    return names, chorales, report or None


def load_bach_music21(progress: bool = True) -> tuple[list[str], list[np.ndarray], str | None]:
    """(names, grids, report) of music21's bundled Bach chorales (see :func:`load_bach_chorales`)."""
    names, chorales, report = load_bach_chorales(progress)
    return names, [c.grid for c in chorales], report
