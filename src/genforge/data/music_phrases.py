"""Fixed-length phrases of four-voice music as token sequences, for the sequence VAE (seqvae).

A family that asks for a ``max_length`` (``data_needs``) models one whole sequence per example
and encodes it into one latent, as MusicVAE does with 2- and 16-bar phrases (Roberts et al.,
"A Hierarchical Latent Vector Model for Learning Long-Term Structure in Music", ICML 2018).
Here a phrase is ``steps = (max_length - 2) // 4`` 16th-note steps of a piece in grid tokens
(S, A, T, B per step), framed ``<bos> ... <eos>``: max_length 130 gives 32 steps, two 4/4 bars.

Phrases start on bar lines (offsets that are multiples of 16 steps). Training phrases start at
every bar, so they overlap; validation and test phrases do not overlap, so each held-out step
is scored once. Phrases that are all rests are left out. ``data.transpose=N`` adds each
training phrase's copies moved by the shifts its piece allows (as for the GPT's windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge import GenforgeError
from genforge.data.music import REST, allowed_shifts, transpose, voice_ranges
from genforge.data.music_tokens import STEPS_PER_BAR, MusicTokenizer
from genforge.data.sequences import SequenceSplit
from genforge.data.spec import DataSpec


def phrase_steps(max_length: int) -> int:
    """16th steps per phrase for a model taking ``max_length`` framed tokens (4 tokens a step)."""
    steps = (max_length - 2) // 4
    if steps < 1:
        raise GenforgeError(f"model.max_length={max_length} holds no whole 16th step of four voices "
                            "(<bos>, 4 tokens a step, <eos>): use at least 6, e.g. 130 for two bars")
    return steps


def phrases_of(grid: np.ndarray, steps: int, stride: int) -> list[np.ndarray]:
    """The (steps, 4) phrases of ``grid`` (T, 4) starting every ``stride`` steps (bar lines when
    ``stride`` is a multiple of 16); a shorter piece gives none; all-rest phrases are dropped."""
    out = []
    for o in range(0, len(grid) - steps + 1, stride):
        p = grid[o:o + steps]
        if (p != REST).any():
            out.append(p)
    return out


@dataclass
class PhraseData:
    """A seqvae run's music: ``train``/``val``/``test`` are :class:`SequenceSplit` of framed
    phrases; ``pieces`` keeps each split's phrase grids (steps, 4) for the music metrics."""

    spec: DataSpec
    tokenizer: MusicTokenizer
    train: SequenceSplit
    val: SequenceSplit
    test: SequenceSplit | None
    steps: int
    pieces: dict[str, list[np.ndarray]] = field(default_factory=dict)
    report: str | None = None

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)


def load_phrases(data_cfg, max_length: int) -> PhraseData:
    """The four-voice dataset ``data_cfg.name`` (``jsb``, ``bach``, a JSB-shaped .json file; a
    MIDI folder read as grids) as phrases of ``phrase_steps(max_length)`` steps in grid tokens."""
    from genforge.data.music_splits import _sources

    if data_cfg.music_tokens != "grid":
        raise GenforgeError("fixed-length phrases (seqvae) are grid tokens, four per 16th step: "
                            "use data.music_tokens=grid")
    tok = MusicTokenizer("grid")
    steps = phrase_steps(max_length)
    splits, report = _sources(data_cfg, tok.kind)
    grids = {k: [g for _, g, _, _ in v] for k, v in splits.items()}
    shifts = None
    if data_cfg.transpose:
        ranges = voice_ranges(grids["train"])
        shifts = [allowed_shifts(g, ranges, data_cfg.transpose) for g in grids["train"]]
    phrases: dict[str, list[np.ndarray]] = {}
    for name, pieces in grids.items():
        stride = STEPS_PER_BAR if name == "train" else max(steps, STEPS_PER_BAR)
        rows = []
        for i, g in enumerate(pieces):
            for k in (shifts[i] if shifts and name == "train" else [0]):
                rows += phrases_of(transpose(g, k) if k else g, steps, stride)
        phrases[name] = rows
    if not phrases.get("train") or not phrases.get("val"):
        raise GenforgeError(f"'{data_cfg.name}' has no piece of {steps} 16th steps in its train or "
                            f"validation split; lower model.max_length")

    def split(rows):
        return SequenceSplit((tok.encode_grid(p) for p in rows), tok.bos_id, tok.eos_id, tok.pad_id,
                             max_len=4 * steps + 2)

    spec = DataSpec(modality="music", vocab_size=tok.vocab_size, name=data_cfg.name,
                    special_ids={"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id},
                    max_length=4 * steps + 2)
    test = split(phrases["test"]) if phrases.get("test") else None
    return PhraseData(spec, tok, split(phrases["train"]), split(phrases["val"]), test, steps,
                      phrases, report)
