"""Bits per dimension of a diffusion model through the probability-flow ODE (Song et al. 2021,
"Score-Based Generative Modeling through SDEs", sec. 4.3 and appendix D.2).

The ODE dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma carries the data at sigma_min to
a Gaussian at sigma_max, and by the instantaneous change of variables (Chen et al. 2018)

    log p_min(x_min) = log N(x_max; 0, (sigma_max^2 + sigma_data^2) I) + int_min^max div f dsigma,

with div f = (d - div D) / sigma and div D estimated by Hutchinson's trace estimator
(one Rademacher probe per image, fixed along the path). Discrete 8-bit pixels are
uniformly dequantized, so the result is an upper bound (in expectation) on the discrete
negative log-likelihood, in the same units as a VAE's discretized-logistic bits/dim.
"""

from __future__ import annotations

import math

import torch


def _drift_and_divergence(denoiser, x, sigma, probe, cond):
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        d = denoiser(xg, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype), cond)
        (jvp_t,) = torch.autograd.grad(d, xg, probe)  # probe^T dD/dx
    dims = x[0].numel()
    div_d = (jvp_t * probe).flatten(1).sum(1)
    return (x - d.detach()) / sigma, (dims - div_d) / sigma


def ode_bits_per_dim(denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator,
                     cond: dict | None = None, bin_width: float = 2 / 255,
                     sigma_data: float = 0.5) -> torch.Tensor:
    """Bits/dim (B,) of images ``x`` (B, C, H, W) on a grid of ``bin_width`` (the model's units:
    2/255 for 8-bit images in [-1, 1]). ``sigmas`` ascending (n+1,), sigma_min to sigma_max:
    n Heun steps, 2n network evaluations with a backward pass each
    (``schedules.likelihood_sigmas(n, ...)``)."""
    if sigmas.dim() != 1 or len(sigmas) < 2 or not (sigmas[1:] > sigmas[:-1]).all():
        raise ValueError("sigmas must ascend with at least two levels (one ODE step)")
    dims = x[0].numel()
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x = x + bin_width * (u - 0.5)  # uniform dequantization within each pixel's bin
    probe = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    delta_logp = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        f1, div1 = _drift_and_divergence(denoiser, x, s, probe, cond)
        x_euler = x + (s_next - s) * f1
        f2, div2 = _drift_and_divergence(denoiser, x_euler, s_next, probe, cond)
        x = x + (s_next - s) * (f1 + f2) / 2
        delta_logp += (s_next - s) * (div1 + div2).double() / 2
    var = sigmas[-1].item() ** 2 + sigma_data**2
    log_prior = -0.5 * (x.double().pow(2).flatten(1).sum(1) / var + dims * math.log(2 * math.pi * var))
    log_p = log_prior + delta_logp + dims * math.log(bin_width)  # density -> probability of the bin
    return -log_p / (dims * math.log(2))
