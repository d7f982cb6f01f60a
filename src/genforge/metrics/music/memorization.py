"""Memorization: the longest run of consecutive grid steps a piece copies verbatim from any
training piece (all four voices equal at every step of the run, same pitches, no
transposition).

Found in O((N + M) log N) per piece instead of comparing every pair of positions: a copy of
length L contains copies of every shorter length, so the longest L is a binary search over
"does some window of L steps of the piece occur among the training pieces' windows of L
steps?", answered by hashing every window (a polynomial rolling hash over the rows, mod
2^64, computed for all windows at once with prefix sums; Karp & Rabin 1987). The training
windows of each length are hashed once and kept. The match reported is checked row by row,
so a hash collision can never report a copy that is not there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from genforge.metrics.music.grid import REST

_BASE = np.uint64(0x9E3779B97F4A7C15)        # odd, so invertible mod 2^64
_BASE_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_PITCHES = 129                                # -1..127


class Copy(NamedTuple):
    steps: int         # length of the longest copied run (0: not even one step matches)
    train_index: int   # which training piece it comes from (-1 when steps == 0)
    train_start: int   # where the run starts there
    start: int         # where it starts in the piece


def row_ids(grid: np.ndarray) -> np.ndarray:
    """(T,) uint64: one number per step, equal exactly when the four pitches are equal."""
    ids = np.zeros(grid.shape[0], dtype=np.uint64)
    for v in range(grid.shape[1]):
        ids = ids * np.uint64(_PITCHES) + (grid[:, v] - REST).astype(np.uint64)
    return ids + np.uint64(1)  # never 0, so runs of rests still hash by their length


def _powers(n: int, base: np.uint64) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    with np.errstate(over="ignore"):
        return np.multiply.accumulate(out, dtype=np.uint64)  # wraps mod 2^64, as intended


def window_hashes(ids: np.ndarray, length: int) -> np.ndarray:
    """(n - length + 1,) uint64: hash of ids[i:i+length] = sum_k ids[i+k] * B^k (mod 2^64)
    for every i, from one prefix sum of ids[j] * B^j rescaled by B^-i."""
    n = ids.size
    if length > n or length < 1:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        prefix = np.concatenate([[np.uint64(0)], np.cumsum(ids * _powers(n, _BASE), dtype=np.uint64)])
        sums = prefix[length:] - prefix[:-length]
        return sums * _powers(n - length + 1, _BASE_INV)


class CopyIndex:
    """The training pieces, hashed by window length on demand (each length once)."""

    def __init__(self, train: Sequence[np.ndarray]):
        self.ids = [row_ids(np.asarray(g)) for g in train]
        self._tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _table(self, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted distinct window hashes of ``length`` steps, with the training piece and
        position of each one's first occurrence."""
        if length not in self._tables:
            hashes = [window_hashes(ids, length) for ids in self.ids]
            flat = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
            piece = np.concatenate([np.full(h.size, k) for k, h in enumerate(hashes)]) if hashes else flat
            pos = np.concatenate([np.arange(h.size) for h in hashes]) if hashes else flat
            table, first = np.unique(flat, return_index=True)
            self._tables[length] = (table, piece[first].astype(np.int64), pos[first].astype(np.int64))
        return self._tables[length]

    def _find(self, ids: np.ndarray, length: int) -> tuple[int, int, int] | None:
        """(training piece, its position, the piece's position) of a window of ``length``
        steps that both hold, checked row by row; None if there is none."""
        table, piece, pos = self._table(length)
        hashes = window_hashes(ids, length)
        if table.size == 0 or hashes.size == 0:
            return None
        at = np.clip(np.searchsorted(table, hashes), 0, table.size - 1)
        for start in np.flatnonzero(table[at] == hashes):
            k, p = int(piece[at[start]]), int(pos[at[start]])
            if np.array_equal(self.ids[k][p:p + length], ids[start:start + length]):
                return k, p, int(start)
        return None

    def longest_copy(self, grid: np.ndarray) -> Copy:
        """The longest run of consecutive steps of ``grid`` found verbatim in a training piece."""
        ids = row_ids(np.asarray(grid))
        lo, hi, best = 0, ids.size, None  # invariant: a checked copy of lo steps exists
        while lo < hi:
            mid = (lo + hi + 1) // 2
            found = self._find(ids, mid)
            if found is None:
                hi = mid - 1
            else:
                lo, best = mid, found
        return Copy(0, -1, -1, -1) if best is None else Copy(lo, *best)
