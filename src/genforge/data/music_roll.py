"""Four-voice chorales as piano-roll images, so the image families (diffusion, the GAN) train on
music with no line of family code: ``data.name = "jsb-roll"`` is an image dataset.

An image is one 2-bar excerpt as a binary piano roll, shape (1, 48, 32): rows are MIDI pitches
81 (top row) down to 34, columns are 32 16th steps, a pixel is 255 where any voice sounds that
pitch (the JSB range is 36..81 for all four voices). This is the "free" piano roll of
Boulanger-Lewandowski et al. (ICML 2012) rather than Coconet's 4-channel one (Huang et al.,
ISMIR 2017): the image families' previews and extractors take 1 or 3 channels, so the four
voices are merged, and two voices on one pitch (a unison) become one pixel.

Decoding a sample (:func:`roll_to_grid`) thresholds it and gives the voices back by pitch
order: with four or more notes sounding, the four most confident, top to bottom as S, A, T, B;
with fewer, each note is sung by one or more adjacent voices, the split that moves the voices
least from the previous step (so a unison comes back as a doubled note). Voice crossings in the
data cannot come back: a crossed pair decodes uncrossed.

Labels: the mode (major/minor) of each excerpt's chorale by the Krumhansl-Schmuckler key, so
``genforge metrics fit-extractor jsb-roll`` can fit the feature extractor that the GAN's
selection (FD) and image eval need.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from genforge.data.music import REST

PITCH_HIGH, PITCH_LOW = 81, 34  # 48 rows: divisible by 16, so a 4-level UNet and the GAN fit
STEPS = 32  # two 4/4 bars of 16ths
ROWS = PITCH_HIGH - PITCH_LOW + 1
MODES = ["major", "minor"]
TRAIN_STRIDE = 16  # training excerpts start at every bar; test excerpts do not overlap
# Image datasets whose samples `genforge sample --out FILE.mid` decodes as music (modalities/roll_music.py)
ROLL_DATASETS = ("jsb-roll",)


def grid_to_roll(grid: np.ndarray) -> np.ndarray:
    """(T, 4) grid -> uint8 (ROWS, T) roll, 255 where a voice sounds; pitches outside
    [PITCH_LOW, PITCH_HIGH] are dropped (JSB has none)."""
    grid = np.asarray(grid)
    roll = np.zeros((ROWS, len(grid)), dtype=np.uint8)
    t, v = np.nonzero((grid != REST) & (grid >= PITCH_LOW) & (grid <= PITCH_HIGH))
    roll[PITCH_HIGH - grid[t, v], t] = 255
    return roll


def _splits(k: int) -> list[tuple[int, ...]]:
    """The ways 4 voices (top to bottom) sing k sorted notes: compositions of 4 into k parts."""
    return [tuple(b - a for a, b in zip((0, *cuts), (*cuts, 4), strict=True))
            for cuts in itertools.combinations(range(1, 4), k - 1)]


def roll_to_grid(roll: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A roll (ROWS, T) or (1, ROWS, T) of values in [0, 1] -> a (T, 4) grid (see the module
    docstring for how voices are given back)."""
    roll = np.asarray(roll, dtype=np.float64)
    roll = roll[0] if roll.ndim == 3 else roll
    if roll.ndim != 2 or roll.shape[0] != ROWS:
        raise ValueError(f"a piano roll is ({ROWS}, steps) or (1, {ROWS}, steps), got {roll.shape}")
    grid = np.full((roll.shape[1], 4), REST, dtype=np.int64)
    prev = grid[0]
    for t in range(roll.shape[1]):
        on = np.nonzero(roll[:, t] > threshold)[0]
        if len(on) > 4:
            on = np.sort(on[np.argsort(-roll[on, t], kind="stable")[:4]])
        notes = PITCH_HIGH - on  # rows ascend, so pitches descend: top voice first
        if len(notes) == 0:
            prev = grid[t]
            continue
        best, best_cost = None, np.inf
        for split in _splits(len(notes)):
            voices = np.repeat(notes, split)
            cost = float(np.abs(voices - prev)[prev != REST].sum())
            if cost < best_cost:
                best, best_cost = voices, cost
        grid[t] = prev = best
    return grid


def excerpts(grid: np.ndarray, stride: int) -> list[np.ndarray]:
    """(STEPS, 4) excerpts of ``grid`` starting every ``stride`` steps, skipping silent ones."""
    return [grid[o:o + STEPS] for o in range(0, len(grid) - STEPS + 1, stride)
            if (grid[o:o + STEPS] != REST).any()]


def jsb_roll() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The ``jsb-roll`` image dataset (``image_sources`` wraps it): JSB train excerpts (every
    bar) and test excerpts (every 2 bars) as uint8 (N, 1, ROWS, STEPS) rolls, int64 labels of
    their chorale's mode, and the class names."""
    from genforge.data.music import load_jsb
    from genforge.metrics.music.tonal import estimate_key

    splits = load_jsb()

    def images(grids, stride):
        x, y = [], []
        for g in grids:
            key = estimate_key(g)
            for e in excerpts(g, stride):
                x.append(grid_to_roll(e)[None])
                y.append(MODES.index(key.mode) if key else 0)
        return np.stack(x), np.asarray(y, dtype=np.int64)

    # JSB's own validation chorales join train: the image loader carves its seeded val split
    # out of train, as it does for every dataset that ships a test split.
    train_x, train_y = images(splits["train"] + splits["val"], TRAIN_STRIDE)
    test_x, test_y = images(splits["test"], STEPS)
    return train_x, train_y, test_x, test_y, list(MODES)


def write_rolls_midi(images: np.ndarray, out: Path, tempo: float = 100.0, threshold: float = 0.5) -> list[Path]:
    """uint8 or [0, 1] rolls (N, 1, ROWS, T) -> OUT-1.mid ... OUT-N.mid (one file when N = 1)."""
    from genforge.data.music import grid_to_midi
    from genforge.outputs import check_out

    x = np.asarray(images, dtype=np.float64)
    x = x / 255.0 if x.max(initial=0) > 1 else x
    paths = [out] if len(x) == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(len(x))]
    for path in paths:  # all names checked before the first file is written
        check_out(path)
    for roll, path in zip(x, paths, strict=True):
        grid_to_midi(roll_to_grid(roll, threshold), path, tempo)
    return paths


def main(argv: list[str] | None = None) -> int:
    """`python -m genforge.data.music_roll SAMPLES.npz OUT.mid [--threshold T]`: the rolls that
    `genforge sample RUN --out SAMPLES.npz` wrote for a jsb-roll run, as four-voice MIDI files."""
    import argparse

    from genforge import GenforgeError

    p = argparse.ArgumentParser(prog="python -m genforge.data.music_roll", description=main.__doc__)
    p.add_argument("samples", help="an .npz written by `genforge sample RUN --out FILE.npz` (key 'images')")
    p.add_argument("out", help="OUT.mid: one file per image, OUT-1.mid, OUT-2.mid, ... when several")
    p.add_argument("--threshold", type=float, default=0.5, help="a pixel above this (0..1) sounds (default 0.5)")
    args = p.parse_args(argv)
    try:
        if not 0 < args.threshold < 1:
            raise GenforgeError(f"--threshold must be in (0, 1), got {args.threshold}")
        if Path(args.out).suffix.lower() not in (".mid", ".midi"):
            raise GenforgeError(f"{args.out}: rolls are written as .mid files")
        try:
            images = np.load(args.samples, allow_pickle=False)["images"]
        except (OSError, ValueError, KeyError) as e:
            raise GenforgeError(f"{args.samples}: not an .npz of sampled images ({type(e).__name__}: {e})") from None
        if images.ndim != 4 or images.shape[1:3] != (1, ROWS):
            raise GenforgeError(f"{args.samples}: images are {images.shape}, not piano rolls (N, 1, {ROWS}, T)")
        paths = write_rolls_midi(images, Path(args.out), threshold=args.threshold)
    except GenforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} MIDI file(s): {paths[0]}{' ...' if len(paths) > 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
