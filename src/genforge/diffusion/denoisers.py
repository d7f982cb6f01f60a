"""Parameterizations: how a network output F becomes a denoiser, and how the loss is weighted.

All four are one formula with different coefficients (Karras et al. 2022, table 1 and eq. 7):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

with x = x0 + sigma * noise. ``c_in`` scales the input to unit variance for data of
standard deviation ``sigma_data`` (for eps/x0/v, sigma_data = 1: the VP picture, where
c_in x = x_vp). Writing every loss as a weighted x0 error w(sigma) ||D - x0||^2 makes
the weightings comparable:

| parameterization | network predicts            | native w(sigma)                |
|------------------|-----------------------------|--------------------------------|
| ``eps``          | the noise (Ho et al. 2020)  | 1 / sigma^2 (= SNR)             |
| ``x0``           | the data                    | 1                              |
| ``v``            | alpha eps - sigma_vp x0 (Salimans & Ho 2022) | (sigma^2 + 1) / sigma^2 (= SNR + 1) |
| ``edm``          | EDM preconditioning         | (sigma^2 + sd^2) / (sigma sd)^2 |

Min-SNR-gamma (Hang et al. 2023, eq. 7) replaces w by min(SNR, gamma), SNR = 1 / sigma^2,
for every parameterization (the SNR/(SNR+1) factors of their eq. 8-9 are exactly the
conversions above). The loss is computed in the network's own output space,
w c_out^2 ||F - F_target||^2 with F_target = (x0 - c_skip x) / c_out, which is the same
number but well-conditioned at small sigma (EDM, eq. 8).
"""

from __future__ import annotations

import torch

PARAMETERIZATIONS = ("eps", "x0", "v", "edm")


def coefficients(kind: str, sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise), each shaped like ``sigma`` (B,)."""
    c_noise = sigma.log() / 4  # EDM's time input for every kind: continuous in sigma
    if kind == "eps":
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise
    if kind == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), 1 / (sigma**2 + 1).sqrt(), c_noise
    if kind == "v":
        return 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1).sqrt(), 1 / (sigma**2 + 1).sqrt(), c_noise
    if kind == "edm":
        sd2 = sigma_data**2
        return (sd2 / (sigma**2 + sd2), sigma * sigma_data / (sigma**2 + sd2).sqrt(),
                1 / (sigma**2 + sd2).sqrt(), c_noise)
    raise ValueError(f"unknown parameterization '{kind}'; choose one of {', '.join(PARAMETERIZATIONS)}")


def x0_weight(kind: str, sigma: torch.Tensor, sigma_data: float = 0.5,
              min_snr_gamma: float | None = None) -> torch.Tensor:
    """w(sigma) of the x0-space loss (table in the module docstring), (B,)."""
    snr = sigma.pow(-2)
    if min_snr_gamma is not None:
        return snr.clamp(max=min_snr_gamma)
    if kind == "eps":
        return snr
    if kind == "x0":
        return torch.ones_like(sigma)
    if kind == "v":
        return snr + 1
    if kind == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    raise ValueError(f"unknown parameterization '{kind}'")


def denoise(net, kind: str, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None,
            sigma_data: float = 0.5) -> torch.Tensor:
    """D(x, sigma): x (B, C, H, W), sigma (B,) -> x0_hat (B, C, H, W), in x's dtype."""
    c_skip, c_out, c_in, c_noise = (c.to(x.dtype)[:, None, None, None] for c in
                                    coefficients(kind, sigma.float(), sigma_data))
    out = net(c_in * x, c_noise.flatten(), cond)
    return c_skip * x + c_out * out.to(x.dtype)


def diffusion_loss(net, kind: str, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                   cond: dict | None, sigma_data: float = 0.5,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """Per-example weighted denoising loss (B,): mean over pixels of
    w c_out^2 (F(c_in x, c_noise) - (x0 - c_skip x) / c_out)^2, x = x0 + sigma * noise."""
    x = x0 + sigma[:, None, None, None] * noise
    c_skip, c_out, c_in, c_noise = coefficients(kind, sigma, sigma_data)
    expand = lambda c: c[:, None, None, None]  # noqa: E731
    out = net(expand(c_in) * x, c_noise, cond).float()
    target = (x0 - expand(c_skip) * x) / expand(c_out)
    weight = x0_weight(kind, sigma, sigma_data, min_snr_gamma) * c_out**2  # (B,)
    return weight * (out - target).pow(2).flatten(1).mean(1)


def with_known_region(denoiser, known: torch.Tensor, mask: torch.Tensor):
    """Inpainting as a denoiser wrapper: where ``mask`` is 0 the denoiser returns the known
    image, so every sampler keeps that region on the path x = known + sigma * noise and ends
    on it exactly at sigma = 0; where ``mask`` is 1 the model fills in. known (B, C, H, W);
    mask (B or 1, 1 or C, H, W) in {0, 1}. Guidance calls with a doubled batch: ``known``
    repeats to fit."""

    def denoise_known(x, sigma, cond):
        fit = known.repeat(x.shape[0] // known.shape[0], 1, 1, 1)
        return mask * denoiser(x, sigma, cond) + (1 - mask) * fit

    return denoise_known
