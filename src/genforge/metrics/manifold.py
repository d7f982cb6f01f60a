"""k-nearest-neighbour estimates over feature sets: precision/recall, density/coverage and
memorization. Pure functions of feature matrices (N, D)."""

from __future__ import annotations

import torch

from genforge import GenforgeError


def _t(x) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    if x.dim() != 2:
        raise GenforgeError(f"features must be a matrix (N, D), got shape {tuple(x.shape)}")
    return x


def knn_radii(features: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of each row (N, D) to its k-th nearest *other* row: (N,)."""
    if features.shape[0] <= k:
        raise GenforgeError(f"k-NN with k={k} needs more than {k} samples, got {features.shape[0]}")
    out = []
    for s in range(0, features.shape[0], chunk):
        d = torch.cdist(features[s:s + chunk], features)  # (chunk, N); the self-distance 0 is rank 1
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _pairwise(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048):
    for s in range(0, a.shape[0], chunk):
        yield s, torch.cdist(a[s:s + chunk], b)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each point (N, D), how many balls B(centre_j, radius_j) contain it: (N,)."""
    counts = torch.zeros(points.shape[0], dtype=torch.long)
    for s, d in _pairwise(points, centres):
        counts[s:s + d.shape[0]] = (d <= radii[None]).sum(1)
    return counts


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the
    distance to the k-th neighbour (k = 3 in the paper). Precision: the fraction of
    fake samples inside the real manifold (quality); recall: the fraction of real
    samples inside the fake manifold (coverage of the data's variety).
    """
    real, fake = _t(real), _t(fake)
    precision = (_inside(fake, real, knn_radii(real, k)) > 0).double().mean()
    recall = (_inside(real, fake, knn_radii(fake, k)) > 0).double().mean()
    return float(precision), float(recall)


def density_coverage(real, fake, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), robust to outliers in the real set.

    density = (1 / kM) sum_j #{real balls containing fake_j}: ~1 for matching
    distributions, above 1 when samples crowd dense regions. coverage = fraction
    of real points whose ball contains at least one fake sample.
    """
    real, fake = _t(real), _t(fake)
    radii = knn_radii(real, k)
    density = _inside(fake, real, radii).double().sum() / (k * fake.shape[0])
    nearest_fake = torch.cat([d.min(1).values for _, d in _pairwise(real, fake)])  # (N,)
    coverage = (nearest_fake <= radii).double().mean()
    return float(density), float(coverage)


def memorization(fake, train, test, near_copy_ratio: float = 0.5) -> dict[str, float]:
    """How close samples sit to the training set compared with unseen data.

    For each sample: r = d(sample, nearest train) / d(sample, nearest test). A model
    that generalizes is as close to test images as to training images (r ~ 1 when
    both reference sets have the same size, which callers must ensure: a larger set
    has closer neighbours by chance); a model that copies has r << 1. Returns the
    median ratio and the fraction of near-copies (r < ``near_copy_ratio``).
    """
    fake, train, test = _t(fake), _t(train), _t(test)
    d_train = torch.cat([d.min(1).values for _, d in _pairwise(fake, train)])
    d_test = torch.cat([d.min(1).values for _, d in _pairwise(fake, test)])
    ratio = d_train / d_test.clamp_min(1e-12)
    return {"memorization_median_ratio": float(ratio.median()),
            "memorization_near_copy_fraction": float((ratio < near_copy_ratio).double().mean())}
