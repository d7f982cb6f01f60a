"""Distances between two sets of features: Frechet distance and kernel inception distance.

Both are pure functions of feature matrices (N, D); which network produced the
features is the caller's business (``genforge.metrics.extractor``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from genforge import GenforgeError


def _as_numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise GenforgeError(f"features must be a matrix (N, D), got shape {x.shape}")
    return x


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), N >= 2."""
    f = _as_numpy(features)
    if f.shape[0] < 2:
        raise GenforgeError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6;
    Dowson & Landau 1982): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    ``scipy.linalg.sqrtm`` of the (non-symmetric) product; when it is singular (fewer
    samples than dimensions, or dead features) both covariances get ``eps`` on the
    diagonal, and the imaginary part that rounding leaves is dropped once checked small.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise GenforgeError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below, not printed
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        product = sigma1 @ sigma2
        if not np.isfinite(covmean).all() or not np.allclose(covmean @ covmean, product,
                                                             atol=1e-4 * max(1.0, np.abs(product).max())):
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            raise GenforgeError("Frechet distance: the covariance square root has a large imaginary "
                                "part; use more samples than feature dimensions")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))  # tiny negatives are rounding error of a zero distance


def frechet_distance(features_a, features_b) -> float:
    """FD between two feature sets (N, D) and (M, D)."""
    return frechet_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def kernel_distance(features_a, features_b, subsets: int = 50, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / D + 1)^3, averaged over random subsets; returns (mean, standard error).

    Unlike FD it has an unbiased estimator, so small sample sizes do not inflate it;
    the standard error (std over subsets / sqrt(subsets)) says how much to trust a
    difference between two models.
    """
    a, b = _as_numpy(features_a), _as_numpy(features_b)
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise GenforgeError(f"KID needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3  # (m, m)
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        # Unbiased: drop the diagonals of the within-set kernels (eq. 2 of Binkowski et al.).
        values[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                     + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean())
    se = values.std(ddof=1) / np.sqrt(subsets) if subsets > 1 else float("nan")
    return float(values.mean()), float(se)
