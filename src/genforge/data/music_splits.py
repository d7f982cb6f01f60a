"""A music run's data: pieces tokenized, framed ``<bos> ... <eos>``, cut into context windows.

A chorale (~240 16th steps, ~970 grid tokens) can be longer than a model's context, so every
split is a list of windows of ``block_size + 1`` tokens over the framed pieces. Window offsets
are multiples of 4, so the voice of every position is the same in every window (position 1 is
always a soprano token). Training windows overlap by half; held-out windows too, but each
target token is scored by exactly one of them (the mask marks the targets a window adds), with
at least half a context before it: the sliding-window evaluation used for language models.

Transposition (``data.transpose=N``) adds, for every training window, its copies moved by each
shift in [-N, N] that keeps every voice of its piece inside the range that voice sings in the
training data: deterministic, so an epoch and a resumed run see the same batches.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.data.music import LoadReport, allowed_shifts, voice_ranges
from genforge.data.music_tokens import MusicTokenizer
from genforge.data.spec import DataSpec

SPLIT_SEED = 20190101  # fixed: the seeded splits of music21's chorales and MIDI folders never change


class WindowSplit:
    """Windows over framed token sequences; ``get`` gives ``x``, ``y``, ``mask`` (B, block_size)."""

    def __init__(self, seqs: list[np.ndarray], block_size: int, pad_id: int, tokenizer: MusicTokenizer,
                 scored_once: bool, shifts: list[list[int]] | None = None):
        self.seqs, self.L, self.pad_id, self.tok = seqs, block_size + 1, pad_id, tokenizer
        stride = max(4, (block_size // 2) // 4 * 4)
        self.items: list[tuple[int, int, int, int]] = []  # (sequence, offset, first scored target, shift)
        for i, seq in enumerate(seqs):
            offsets = list(range(0, max(len(seq) - self.L, 0) + stride, stride))
            offsets = [o for o in offsets if o == 0 or o + 1 < len(seq)]
            covered = 0  # targets 1..covered are scored by earlier windows
            for o in offsets:
                first = covered + 1 if scored_once else o + 1
                covered = min(len(seq) - 1, o + self.L - 1)
                if first > covered:
                    continue
                for k in (shifts[i] if shifts else [0]):
                    self.items.append((i, o, first, k))

    def __len__(self) -> int:
        return len(self.items)

    def get(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        B, T = len(indices), self.L - 1
        x = torch.full((B, T), self.pad_id, dtype=torch.long)
        y = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for row, idx in enumerate(indices):
            i, o, first, k = self.items[int(idx)]
            w = self.seqs[i][o:o + self.L]
            if k:
                w = self.tok.transpose_ids(w, k)
            w = torch.as_tensor(w, dtype=torch.long)
            n = len(w) - 1
            x[row, :n], y[row, :n] = w[:-1], w[1:]
            mask[row, max(first - o - 1, 0):n] = True  # y[j] is target o + 1 + j
        return {"x": x, "y": y, "mask": mask}


@dataclass
class MusicData:
    """A run's music: ``train``/``val``/``test`` are :class:`WindowSplit`; ``pieces`` keeps each
    split's grids (T, 4) for the music metrics (``test`` is None when the source has none)."""

    spec: DataSpec
    tokenizer: MusicTokenizer
    train: WindowSplit
    val: WindowSplit
    test: WindowSplit | None
    pieces: dict[str, list[np.ndarray]] = field(default_factory=dict)
    report: str | None = None

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def prompt_ids(self) -> list[int]:
        return [self.tokenizer.bos_id]


def _seeded_split(items: list, val_fraction: float, test_fraction: float = 0.1) -> dict[str, list]:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(items))
    n_test = max(1, int(len(items) * test_fraction))
    n_val = max(1, int(len(items) * val_fraction))
    if len(items) - n_test - n_val < 1:
        raise GenforgeError(f"{len(items)} pieces are too few to hold out test and validation pieces; "
                            "give at least 3")
    pick = lambda idx: [items[i] for i in sorted(idx)]  # noqa: E731
    return {"test": pick(order[:n_test]), "val": pick(order[n_test:n_test + n_val]),
            "train": pick(order[n_test + n_val:])}


def _sources(data_cfg, kind: str) -> tuple[dict[str, list], str | None]:
    """Each split's pieces as (name, grid, onsets or None, extra), and the load report; ``extra``
    is a MIDI piece's notes, a music21 chorale's :class:`~genforge.data.music_chorales.Chorale`
    (key, fermatas), else None."""
    from genforge.data import music

    if data_cfg.name in ("jsb", "bach") and kind == "events":
        raise GenforgeError(f"'{data_cfg.name}' is four-voice chorales: use data.music_tokens=grid")
    if data_cfg.name != "bach" and (kind == "chorale" or getattr(data_cfg, "key_to_c", False)):
        raise GenforgeError(f"keys and fermatas come from music21's Bach chorales: data.music_tokens=chorale and "
                            f"data.key_to_c need data.name=bach, not '{data_cfg.name}'")
    if data_cfg.name == "jsb" or Path(data_cfg.name).suffix.lower() == ".json":
        path = None if data_cfg.name == "jsb" else Path(data_cfg.name).expanduser()
        splits = music.load_jsb(path)
        return {k: [(f"{k}[{i}]", g, None, None) for i, g in enumerate(v)] for k, v in splits.items()}, None
    if data_cfg.name == "bach":
        from genforge.data.music_chorales import load_bach_chorales, to_c

        names, chorales, report = load_bach_chorales()
        if getattr(data_cfg, "key_to_c", False):
            chorales = [to_c(c) for c in chorales]
        return _seeded_split([(n, c.grid, None, c) for n, c in zip(names, chorales, strict=True)],
                             data_cfg.val_fraction), report
    names, pieces, bad = music.load_midi_folder(data_cfg.name)
    if not pieces:
        raise GenforgeError(f"{data_cfg.name} holds no usable MIDI files ({bad.text(data_cfg.name, 0)})")
    rows = []
    for name, (notes, n_parts) in zip(names, pieces, strict=True):
        grid, onsets = music.notes_to_grid(notes, n_parts)
        rows.append((name, grid, onsets, notes))
    return _seeded_split(rows, data_cfg.val_fraction), bad.text(data_cfg.name, len(rows))


def load_music(data_cfg, block_size: int) -> MusicData:
    """The music dataset ``data_cfg.name`` (``jsb``, ``bach``, a JSB-shaped .json file or a MIDI
    folder) tokenized with ``data.music_tokens`` into windows of ``block_size`` + 1 tokens."""
    tok = MusicTokenizer(data_cfg.music_tokens)
    splits, report = _sources(data_cfg, tok.kind)
    bos, eos, pad = tok.bos_id, tok.eos_id, tok.pad_id

    def framed(piece) -> np.ndarray:
        _, grid, onsets, extra = piece
        if tok.kind == "chorale":
            body = tok.encode_grid(grid, onsets, fermata=extra.fermata, key=extra.key)
        else:
            body = tok.encode_grid(grid, onsets) if tok.kind == "grid" else tok.encode_notes(extra)
        return np.asarray([bos, *body, eos], dtype=np.int64)

    seqs = {k: [framed(p) for p in v] for k, v in splits.items()}
    notes = [report] if report else []
    long = LoadReport()
    for (name, *_), s in zip(splits["train"], seqs["train"], strict=True):
        if len(s) > block_size + 1:
            long.reject(f"longer than the context of {block_size} tokens (trained on in overlapping windows; "
                        "raise model.block_size to see them whole)", f"{name} ({len(s)} tokens)")
    for reason, n in long.counts.items():
        notes.append(f"{n} training pieces {reason}, e.g. {', '.join(long.examples[reason])}")
    shifts = None
    if data_cfg.transpose:
        grids = [g for _, g, _, _ in splits["train"]]
        ranges = voice_ranges(grids)
        shifts = [allowed_shifts(g, ranges, data_cfg.transpose) for g in grids]
    train = WindowSplit(seqs["train"], block_size, pad, tok, scored_once=False, shifts=shifts)
    val = WindowSplit(seqs["val"], block_size, pad, tok, scored_once=True)
    test = WindowSplit(seqs["test"], block_size, pad, tok, scored_once=True) if seqs.get("test") else None
    spec = DataSpec(modality="music", vocab_size=tok.vocab_size, name=data_cfg.name,
                    special_ids={"pad": pad, "bos": bos, "eos": eos})
    text = "; ".join(notes) or None
    if text:
        print(f"note: {text}", file=sys.stderr)
    pieces = {k: [g for _, g, _, _ in v] for k, v in splits.items()}
    return MusicData(spec, tok, train, val, test, pieces, text)
