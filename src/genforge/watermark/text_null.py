"""The null distribution of the text watermark's green count on human text, for ONE key.

Why the plain z-test over-fires (measured, benchmarks/results/watermark_text.md): the green list
is a keyed function of the previous token, so whether a *frequent* human bigram ("th", "e ", " t")
is green is fixed once the key is drawn. Averaged over keys the green share of human text is
gamma and the binomial test holds (200 keys x 200 Tiny Shakespeare windows: z > 2 on 1.5-3.1%,
nominal 2.3%); for one key it is gamma plus that key's luck on the common bigrams, so a run's
fixed key fires on 0-74% of human windows at a nominal 5% (the 95th-percentile key: 11-18%).
Every text checked against one key shares that bias; it is not noise that more text averages out
(z grows with sqrt(T) times the bias).

The fix conditions on the key: a reference model of human text (the run's training split; or a
file the user gives) says, for each context c, how likely each next token t is (P(t | c): bigram
counts with a Dirichlet prior toward the unigram distribution, MacKay & Peto 1995). With distinct
(context, token) pairs counted once, a pair after a context seen n_c times in the checked text is
token t with a weight q_t = 1 - (1 - P(t | c))^n_c (the chance t follows c at least once), so the
null probability that a distinct pair after c is green is

    p_c = sum_{t green under the key} q_t / sum_t q_t,

and the green count G over T distinct pairs is, under "human text like the reference", a sum of
independent Bernoulli(p_c) (pairs after one context are drawn without replacement, which only
lowers the variance, so the test is conservative there). The p-value is that Poisson-binomial's
exact upper tail P(G' >= G) (dynamic programming, up to MAX_EXACT pairs; a normal tail with
continuity correction beyond), and z = (G - sum p) / sqrt(sum p (1 - p)) is reported with it.
Text unlike the reference (an untrained model's near-uniform noise) breaks the conditioned null in
either direction, so the detector also runs the key-averaged binomial test (every p_c the exact
green share) and reports the larger p-value: rejecting only when both reject keeps the level of
whichever null is true. Without a reference only the binomial test runs (null "uniform"): valid
over keys, not for an unlucky key.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genforge import GenforgeError

PRIOR = 1.0  # Dirichlet prior mass toward the unigram distribution (one pseudo-occurrence per context)
MAX_EXACT = 20_000  # distinct pairs up to which the Poisson-binomial tail is exact (O(T^2) numpy work)


@dataclass(frozen=True)
class Reference:
    """n-gram counts of human text: ``rows`` (N, context + 1) distinct (context..., token) id tuples,
    sorted, with ``counts`` (N,); ``unigram`` (V,) token frequencies (summing to 1)."""

    rows: np.ndarray
    counts: np.ndarray
    unigram: np.ndarray

    @property
    def context(self) -> int:
        return self.rows.shape[1] - 1

    @classmethod
    def from_ids(cls, ids, vocab_size: int, context: int) -> Reference:
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        if len(ids) <= context + 100:
            raise GenforgeError(f"reference text has {len(ids)} tokens; a human-text reference needs "
                                "thousands (a few pages of text in the domain checked)")
        windows = np.lib.stride_tricks.sliding_window_view(ids, context + 1)  # (N, c + 1), a view
        if vocab_size ** (context + 1) < 2**62:  # one int64 per tuple: a 1-D unique, ~10x faster
            codes = np.zeros(len(windows), dtype=np.int64)
            for j in range(context + 1):
                codes = codes * vocab_size + windows[:, j]
            codes, counts = np.unique(codes, return_counts=True)
            rows = np.stack([codes // vocab_size ** (context - j) % vocab_size for j in range(context + 1)], 1)
        else:
            rows, counts = np.unique(windows, axis=0, return_counts=True)
        unigram = np.bincount(ids, minlength=vocab_size).astype(np.float64) + 0.5  # no zero mass
        return cls(rows, counts.astype(np.float64), unigram / unigram.sum())

    def next_probs(self, ctx: tuple[int, ...]) -> np.ndarray:
        """P(t | ctx) for every token t: (V,), smoothed toward the unigram distribution."""
        key = np.asarray(ctx, dtype=np.int64)
        lo = _search(self.rows[:, :-1], key, "left")
        hi = _search(self.rows[:, :-1], key, "right")
        p = PRIOR * self.unigram.copy()
        np.add.at(p, self.rows[lo:hi, -1], self.counts[lo:hi])
        return p / (self.counts[lo:hi].sum() + PRIOR)


def _search(sorted_rows: np.ndarray, key: np.ndarray, side: str) -> int:
    """Binary search of one context tuple in lexicographically sorted rows (N, c)."""
    lo, hi = 0, len(sorted_rows)
    while lo < hi:
        mid = (lo + hi) // 2
        row = sorted_rows[mid]
        diff = np.nonzero(row != key)[0]
        less = bool(diff.size) and row[diff[0]] < key[diff[0]]
        if less or (side == "right" and not diff.size):
            lo = mid + 1
        else:
            hi = mid
    return lo


def null_probs(reference: Reference, ctx: tuple[int, ...], seen: int, green_row: np.ndarray) -> float:
    """p_c of the module docstring: a distinct pair after ``ctx`` (seen ``seen`` times) is green."""
    p = reference.next_probs(ctx)
    q = -np.expm1(seen * np.log1p(-np.minimum(p, 1 - 1e-12)))  # 1 - (1 - p)^n without cancellation
    return float(q[green_row].sum() / q.sum())


def upper_tail(ps: np.ndarray, green: int) -> float:
    """P(sum of independent Bernoulli(ps) >= green): exact by dynamic programming (Poisson-binomial)."""
    t = len(ps)
    if green <= 0:
        return 1.0
    if green > t:
        return 0.0
    if t > MAX_EXACT:
        mu, var = float(ps.sum()), float((ps * (1 - ps)).sum())
        return 0.5 * math.erfc((green - 0.5 - mu) / math.sqrt(2 * max(var, 1e-12)))
    dist = np.zeros(t + 1)
    dist[0] = 1.0
    for i, p in enumerate(ps):  # dist[k] = P(k green among the first i pairs)
        dist[1: i + 2] = dist[1: i + 2] * (1 - p) + dist[: i + 1] * p
        dist[0] *= 1 - p
    return float(min(1.0, max(0.0, dist[green:].sum())))


def run_reference(run_dir, context: int) -> tuple[Reference | None, str]:
    """(the run's training-split reference, "") or (None, why not). Needs the run's corpus
    (GENFORGE_DATA); counted once per process (the tokens come from genforge's text cache, and
    nothing is written into the run folder)."""
    return _run_reference(str(Path(run_dir).resolve()), context)


@functools.lru_cache(maxsize=8)  # a server checks many texts against the same few runs
def _run_reference(run_dir: str, context: int) -> tuple[Reference | None, str]:
    run_dir = Path(run_dir)
    try:
        from genforge import checkpoint as ckpt
        from genforge.config import config_from_dict
        from genforge.data.text import load_text

        cfg, model_cfg = config_from_dict(ckpt.checkpoint_config(ckpt.require_checkpoint(run_dir, "auto")))
        data = load_text(cfg.data, int(model_cfg.block_size))
        ref = Reference.from_ids(np.asarray(data.train.tokens), data.spec.vocab_size, context)
    except (GenforgeError, OSError, AttributeError, ImportError) as e:
        return None, f"the run's training text is not available ({str(e).splitlines()[0][:160]})"
    return ref, ""
