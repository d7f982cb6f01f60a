"""Samplers: plain functions with one signature,

    sampler(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None) -> x0

- ``denoiser(x, sigma, cond) -> x0_hat``: x (B, C, H, W) at noise level sigma (B,), in the
  VE picture x = x0 + sigma * noise; ``cond`` is a dict of batch-first tensors or None.
- ``x``: the starting point at ``sigmas[0]`` (pure noise ``sigma_max * randn``, or a noised
  image for SDEdit); ``sigmas``: (n+1,) strictly descending, ending at 0 (``schedules.py``;
  checked by every sampler, since a repeated level is a zero-length step).
- ``guidance``: classifier-free guidance scale, applied by :func:`guided` (1 = conditional).
- ``generator``: the only source of randomness (ancestral samplers' fresh noise).
- ``callback(info)``: called after every step with ``{"step", "steps", "sigma", "x",
  "denoised"}`` (progress bars, intermediate images).

They never touch the model, so any sampler drives any parameterization, and guidance or
inpainting are wrappers around the denoiser, not sampler features.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from genforge.diffusion.schedules import check_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor, dict | None], torch.Tensor]


def guided(denoiser: Denoiser, cond: dict | None, guidance: float) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2021, eq. 6) in x0 space:
    D = D(x | none) + w (D(x | cond) - D(x | none)), both halves in one batched call.

    ``cond["uncond"]`` (B,) bool marks rows the network must treat as unconditional. At
    w = 1, or without a condition, this is the plain conditional denoiser (one call).
    """
    if cond is None or guidance == 1.0:
        return lambda x, sigma: denoiser(x, sigma, cond)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        both = {k: torch.cat([v, v]) for k, v in cond.items() if k != "uncond"}
        drop = cond.get("uncond", torch.zeros(b, dtype=torch.bool, device=x.device))
        both["uncond"] = torch.cat([drop, torch.ones_like(drop)])
        d_cond, d_uncond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
        return d_uncond + guidance * (d_cond - d_uncond)

    return denoise


def _steps(sigmas: torch.Tensor) -> int:
    """Steps in ``sigmas`` (n+1,), after checking the contract every sampler relies on."""
    check_sigmas(sigmas)
    return len(sigmas) - 1


def _level(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)


def _report(callback, i, n, sigma, x, denoised):
    if callback is not None:
        callback({"step": i, "steps": n, "sigma": float(sigma), "x": x, "denoised": denoised})


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None):
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al.
    2022, eq. 3 with sigma(t) = t). One network evaluation per step."""
    d_fn, n = guided(denoiser, cond, guidance), _steps(sigmas)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = d_fn(x, _level(s, x))
        x = x + (x - denoised) / float(s) * float(s_next - s)
        _report(callback, i, n, s, x, denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None):
    """Heun's second-order method (Karras et al. 2022, algorithm 1): an Euler step, then the
    trapezoidal correction with the slope at the new point; the last step (to sigma = 0) is
    Euler. Two network evaluations per step, one on the last."""
    d_fn, n = guided(denoiser, cond, guidance), _steps(sigmas)
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, denoised = _heun_step(d_fn, x, s, s_next)
        _report(callback, i, n, s, x, denoised)
    return x


def _heun_step(d_fn, x: torch.Tensor, s: float, s_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Karras et al. 2022's algorithm 1 from level ``s`` to ``s_next``: Euler, then
    the trapezoidal correction unless ``s_next`` is 0. Returns (x at s_next, D(x, s))."""
    denoised = d_fn(x, _level(s, x))
    slope = (x - denoised) / s
    x_euler = x + slope * (s_next - s)
    if s_next == 0:
        return x_euler, denoised
    slope_next = (x_euler - d_fn(x_euler, _level(s_next, x))) / s_next
    return x + (slope + slope_next) / 2 * (s_next - s), denoised


# Karras et al. 2022, table 5, ImageNet-64 (their stochastic sampler on a pretrained ADM model). On
# 8x8 digits these beat their CIFAR-10 values (30, 0.01, 1, 1.007) at 20 steps and match DDPM-1000's
# FD within noise (benchmarks/results/diffusion_steps.md).
CHURN_DEFAULTS = {"s_churn": 80.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}


def check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    """The churn parameters' domain: S_churn >= 0, 0 <= S_tmin <= S_tmax, S_noise > 0, all finite
    (S_tmax may be inf: churn at every level above S_tmin)."""
    if not (math.isfinite(s_churn) and s_churn >= 0):
        raise ValueError(f"S_churn must be finite and >= 0, got {s_churn}")
    if not (math.isfinite(s_tmin) and 0 <= s_tmin <= s_tmax and not math.isnan(s_tmax)):
        raise ValueError(f"need 0 <= S_tmin <= S_tmax, got S_tmin={s_tmin}, S_tmax={s_tmax}")
    if not (math.isfinite(s_noise) and s_noise > 0):
        raise ValueError(f"S_noise must be finite and > 0, got {s_noise}")


@torch.no_grad()
def sample_heun_churn(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None,
                      s_churn: float = CHURN_DEFAULTS["s_churn"], s_tmin: float = CHURN_DEFAULTS["s_tmin"],
                      s_tmax: float = CHURN_DEFAULTS["s_tmax"], s_noise: float = CHURN_DEFAULTS["s_noise"]):
    """Karras et al. 2022's stochastic sampler (algorithm 2): before each Heun step from a level
    s in [S_tmin, S_tmax], raise the noise to s_hat = (1 + gamma) s by adding fresh noise of
    standard deviation S_noise sqrt(s_hat^2 - s^2), gamma = min(S_churn / n, sqrt(2) - 1), then
    take the Heun step from s_hat (algorithm 1's step, :func:`_heun_step`) to the next level.
    The added noise corrects the errors earlier steps made (sec. 4: an SDE's Langevin part);
    S_noise slightly above 1 offsets the detail a denoiser's averaging removes. S_churn = 0 is
    exactly :func:`sample_heun`. Two network evaluations per step, one on the last. Defaults:
    :data:`CHURN_DEFAULTS` (their table 5, ImageNet-64)."""
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    d_fn, n = guided(denoiser, cond, guidance), _steps(sigmas)
    # sqrt(2) - 1: churn never more than doubles the variance; n = 0 (SDEdit at strength 0) takes no step
    gamma_max = min(s_churn / n, math.sqrt(2) - 1) if n else 0.0
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + s_noise * math.sqrt(s_hat * s_hat - s * s) * z
        x, denoised = _heun_step(d_fn, x, s_hat, s_next)
        _report(callback, i, n, s, x, denoised)
    return x


def ancestral_step(x: torch.Tensor, denoised: torch.Tensor, s: float, s_next: float,
                   eta: float = 1.0) -> tuple[torch.Tensor, float]:
    """The Gaussian of one DDIM step with stochasticity ``eta`` (see :func:`_ddim`): its mean
    (shape of x) and standard deviation ``up``; x' = mean + up z. At eta = 1 this is the DDPM
    posterior, the per-step policy DDPO differentiates (Black et al. 2023, sec. 4.3)."""
    eps = (x - denoised) / s
    up = eta * s_next * math.sqrt(max(s * s - s_next * s_next, 0.0)) / s
    down = math.sqrt(max(s_next * s_next - up * up, 0.0))
    return denoised + down * eps, up


def _ddim(denoiser, x, sigmas, eta, cond, guidance, generator, callback):
    """DDIM (Song et al. 2021, eq. 12) rewritten for x = x0 + sigma * eps. With
    eps = (x - x0_hat) / s, the update is x' = x0_hat + sqrt(s'^2 - up^2) eps + up z,
    up = eta * s' * sqrt(s^2 - s'^2) / s. The VP scale factors cancel; eta = 0 is the
    deterministic DDIM step (identical to Euler in these units), eta = 1 samples the DDPM
    posterior q(x_{t-1} | x_t, x0) (Ho et al. 2020, eq. 7): ancestral DDPM."""
    d_fn, n = guided(denoiser, cond, guidance), _steps(sigmas)
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = d_fn(x, _level(s, x))
        x, up = ancestral_step(x, denoised, s, s_next, eta)
        if up > 0:
            x = x + up * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        _report(callback, i, n, s, x, denoised)
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None,
                eta: float = 0.0):
    """DDIM with stochasticity ``eta`` in [0, 1] (0: deterministic)."""
    return _ddim(denoiser, x, sigmas, eta, cond, guidance, generator, callback)


@torch.no_grad()
def sample_ddpm(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None):
    """Ancestral DDPM sampling (Ho et al. 2020, algorithm 2, posterior variance beta-tilde):
    DDIM at eta = 1 on any step count."""
    return _ddim(denoiser, x, sigmas, 1.0, cond, guidance, generator, callback)


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2): a multistep second-order
    solver of the data-prediction ODE in lambda = -log sigma. With h = lambda' - lambda and
    r = h_prev / h, x' = (s'/s) x - expm1(-h) D', D' = (1 + 1/2r) D_i - (1/2r) D_{i-1}
    (D' = D_i on the first step). The step to sigma = 0 returns D_i. One evaluation per step."""
    d_fn, n = guided(denoiser, cond, guidance), _steps(sigmas)
    previous, h_prev = None, None
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = d_fn(x, _level(s, x))
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            d_eff = denoised
            if previous is not None:
                r = h_prev / h
                d_eff = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (s_next / s) * x - math.expm1(-h) * d_eff
            previous, h_prev = denoised, h
        _report(callback, i, n, s, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, cond=None, guidance=1.0, generator=None, callback=None,
                        eta: float = 1.0, s_noise: float = 1.0):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", sec. 5 and appendix: the
    second-order multistep solver of the data-prediction diffusion SDE; the midpoint form that
    k-diffusion's ``sample_dpmpp_2m_sde`` uses). With h = log(s / s'), its first-order step is

        x' = (s'/s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D + S_noise s' sqrt(1 - e^{-2 eta h}) z,

    at eta = 1 exactly the DDPM posterior step (:func:`sample_ddpm`'s Gaussian: mean
    (s'/s)^2 x + (1 - (s'/s)^2) D, sd s' sqrt(1 - (s'/s)^2)); from the second step on it adds
    the multistep correction (1 - e^{-(1+eta) h}) / (2r) (D - D_prev), r = h_prev / h. At eta = 0
    it is :func:`sample_dpmpp_2m` (the ODE). The step to sigma = 0 returns D. One network
    evaluation per step; ``generator`` draws z (independent per step, not k-diffusion's
    Brownian tree)."""
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"S_noise must be finite and >= 0, got {s_noise}")
    d_fn, n = guided(denoiser, cond, guidance), _steps(sigmas)
    previous, h_prev = None, None
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = d_fn(x, _level(s, x))
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            weight = -math.expm1(-(1 + eta) * h)  # 1 - e^{-(1+eta) h}, (0, 1)
            x = (s_next / s) * math.exp(-eta * h) * x + weight * denoised
            if previous is not None:
                x = x + weight / (2 * (h_prev / h)) * (denoised - previous)
            std = s_noise * s_next * math.sqrt(-math.expm1(-2 * eta * h))
            if std > 0:
                x = x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            previous, h_prev = denoised, h
        _report(callback, i, n, s, x, denoised)
    return x


SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "heun-churn": sample_heun_churn,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
}
