"""Bias measures for runs with classes. Pure functions of class counts and feature sets.

- ``class_balance``: do unconditional samples come in the training data's class proportions?
  Pearson's chi-square goodness-of-fit test (scipy.stats.chisquare) of the samples' class
  counts against the expected counts n * p_train, with K - 1 degrees of freedom; the most
  over- and under-represented classes are ranked by Pearson residual (O - E) / sqrt(E).
  A small p-value says the model does not reproduce the data's class balance (mode collapse,
  amplified majority classes); it says nothing about which samples are good.
- ``per_class_quality``: for conditional runs, each class's FD between the samples asked for
  that class and real images of that class, and the label agreement (the share of samples the
  domain classifier assigns to the class asked for).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from genforge import GenforgeError

ALPHA = 0.01  # the significance level at which a class imbalance is flagged


def class_balance(observed: Sequence[int], expected_fractions: Sequence[float], names: Sequence[str],
                  top: int = 3, alpha: float = ALPHA) -> dict:
    """Chi-square goodness of fit of sample class ``observed`` counts (K,) to the training
    data's class ``expected_fractions`` (K,), with the ``top`` most over- and under-represented
    classes. Classes the training data never shows (expected 0) are refused: the test has no
    expected count for them."""
    from scipy.stats import chisquare

    obs = np.asarray(observed, dtype=np.float64)
    p = np.asarray(expected_fractions, dtype=np.float64)
    if obs.ndim != 1 or obs.shape != p.shape or len(names) != len(obs) or len(obs) < 2:
        raise GenforgeError(f"class balance needs K >= 2 observed counts, expected fractions and names "
                            f"of one length, got {obs.shape}, {p.shape} and {len(names)}")
    if (obs < 0).any() or not np.isfinite(p).all() or (p <= 0).any():
        raise GenforgeError("class counts must be >= 0 and every expected fraction > 0")
    n = obs.sum()
    if n == 0:
        raise GenforgeError("no samples to test the class balance of")
    expected = p / p.sum() * n
    stat, pvalue = chisquare(obs, expected)
    residual = (obs - expected) / np.sqrt(expected)
    order = np.argsort(-residual)

    def row(k: int) -> dict:
        return {"class": str(names[k]), "sample_share": float(obs[k] / n), "train_share": float(expected[k] / n),
                "ratio": float(obs[k] / expected[k]), "residual": float(residual[k])}

    return {"test": "chi-square goodness of fit", "samples": int(n), "dof": len(obs) - 1,
            "chi2": float(stat), "p_value": float(pvalue), "alpha": alpha, "imbalanced": bool(pvalue < alpha),
            # the smallest expected count: the chi-square approximation wants >= 5 (Cochran 1954)
            "min_expected": float(expected.min()),
            "over": [row(int(k)) for k in order[:top] if residual[k] > 0],
            "under": [row(int(k)) for k in order[::-1][:top] if residual[k] < 0],
            "sample_shares": {str(names[k]): float(obs[k] / n) for k in range(len(obs))},
            "train_shares": {str(names[k]): float(expected[k] / n) for k in range(len(obs))}}


def per_class_quality(fake_features: torch.Tensor, fake_probs: torch.Tensor, requested: torch.Tensor,
                      real_features: torch.Tensor, real_labels: torch.Tensor, names: Sequence[str]) -> dict:
    """For each class k: FD between the features (n_k, D) of samples requested as k and real
    images of class k (as many as there are samples, when the real set has them), label
    agreement of those samples, and n_k. FD is biased upwards at small n (compare classes at
    equal n only); a class with fewer than 2 samples or real images has FD NaN."""
    from genforge.metrics.classes import label_agreement
    from genforge.metrics.frechet import frechet_distance

    rows = {}
    for k, name in enumerate(names):
        pick = (requested.cpu() == k).nonzero().flatten()
        real = real_features[(real_labels.cpu() == k).nonzero().flatten()]
        n = len(pick)
        if n == 0:
            continue
        real = real[:max(n, 2)]
        fd = frechet_distance(real, fake_features[pick]) if n >= 2 and len(real) >= 2 else math.nan
        rows[str(name)] = {"samples": n, "real": int(len(real)), "fd": float(fd),
                           "label_agreement": label_agreement(fake_probs[pick], requested.cpu()[pick])}
    if not rows:
        raise GenforgeError("no conditional samples to score per class")
    scored = [c for c in rows if not math.isnan(rows[c]["fd"])]
    worst = max(scored, key=lambda c: rows[c]["fd"]) if scored else None
    return {"classes": rows, "worst_fd_class": worst,
            "mean_label_agreement": float(np.mean([r["label_agreement"] for r in rows.values()]))}
