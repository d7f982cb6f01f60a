"""Latent tools as pure functions: interpolation paths and attribute vectors.

They work on any :class:`~genforge.families.base.LatentVariableModel` (``encode(x, y) ->
(mean, logvar)``, ``decode(z, y)``; the VAE today). Images are (N, C, H, W) tensors in
the run's ``spec.pixel_range``. They return tensors; ``genforge.modalities.image`` turns
them into files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genforge import GenforgeError


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line between latents a, b (L,) at fractions t (S,): (S, L)."""
    return a[None] + t[:, None] * (b - a)[None]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985), recommended for Gaussian latents by White (2016):
    a straight line between two typical N(0, I) points passes near the origin, where the
    prior has little typical mass, so midpoints decode to washed-out images. (S, L)."""
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    so = torch.sin(omega)
    if so.abs() < 1e-6:  # (anti)parallel: the great circle is undefined, fall back to a line
        return lerp(a, b, t)
    return (torch.sin((1 - t) * omega) / so)[:, None] * a[None] + (torch.sin(t * omega) / so)[:, None] * b[None]


def _labels(y, n: int, device) -> torch.Tensor | None:
    if y is None:
        return None
    y = torch.as_tensor(y, device=device).long().reshape(-1)
    return y.expand(n) if y.numel() == 1 else y


@torch.no_grad()
def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, points: int = 8, method: str = "slerp",
                y_a=None, y_b=None) -> torch.Tensor:
    """Decode ``points`` points on the path between the posterior means of images x_a and x_b
    ((C, H, W) each): (points, C, H, W). The endpoints are the two reconstructions. A
    conditional model keeps y_a for the first half of the path and y_b for the second."""
    if points < 2:
        raise GenforgeError("interpolation needs at least 2 points")
    if method not in ("lerp", "slerp"):
        raise GenforgeError(f"unknown interpolation '{method}'; use lerp or slerp")
    device = next(model.parameters()).device
    ya, yb = _labels(y_a, 1, device), _labels(y_b, 1, device)
    za = model.encode(x_a[None].to(device), ya)[0][0]
    zb = model.encode(x_b[None].to(device), yb)[0][0]
    t = torch.linspace(0, 1, points, device=device)
    z = (lerp if method == "lerp" else slerp)(za, zb, t)  # (points, L)
    y = None
    if ya is not None:
        y = torch.where(t < 0.5, ya.expand(points), (yb if yb is not None else ya).expand(points))
    return model.decode(z, y)


@torch.no_grad()
def attribute_vector(model, images: torch.Tensor, labels: torch.Tensor, from_class: int,
                     to_class: int, batch_size: int = 500) -> torch.Tensor:
    """Mean posterior mean of class ``to_class`` minus that of ``from_class`` (White 2016): (L,)."""
    labels = torch.as_tensor(labels).long().to(images.device)
    means = {}
    for cls in (from_class, to_class):
        sel = images[labels == cls]
        if sel.shape[0] == 0:
            raise GenforgeError(f"no images of class {cls} to compute an attribute vector from")
        cond = model.conditioning_classes > 0
        zs = [model.encode(sel[s:s + batch_size],
                           torch.full((min(batch_size, sel.shape[0] - s),), cls, device=sel.device)
                           if cond else None)[0] for s in range(0, sel.shape[0], batch_size)]
        means[cls] = torch.cat(zs).mean(0)
    return means[to_class] - means[from_class]


@torch.no_grad()
def apply_attribute(model, images: torch.Tensor, vector: torch.Tensor,
                    scales: Sequence[float] = (0.0, 0.5, 1.0, 1.5), y=None) -> torch.Tensor:
    """Decode z(x) + s * vector for each image and scale: (N, len(scales), C, H, W)."""
    y = _labels(y, images.shape[0], vector.device)
    z = model.encode(images, y)[0]  # (N, L)
    rows = [model.decode(z + s * vector, y) for s in scales]
    return torch.stack(rows, 1)
