"""Noise schedules as pure functions. Every function returns float64 sigmas on the CPU.

Sampling schedules are descending and end with an appended 0: ``n`` steps use
``n + 1`` entries, and the last step lands exactly on the data (sigma = 0).
"""

from __future__ import annotations

import math

import torch

TRAIN_TIMESTEPS = 1000  # T of the discrete DDPM-style schedules


def vp_alpha_bars(kind: str, timesteps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """alpha_bar_t for t = 1..T, shape (T,), decreasing.

    - ``linear``: betas from 1e-4 to 0.02 (Ho et al. 2020, sec. 4);
    - ``cosine``: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, betas clipped
      at 0.999 (Nichol & Dhariwal 2021, eq. 17).
    """
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, 0)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        return torch.cumprod(1.0 - betas, 0)
    raise ValueError(f"unknown VP schedule '{kind}' (linear or cosine)")


def vp_sigmas(kind: str, timesteps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """The T training noise levels of a VP schedule in VE units: sigma_t = sqrt((1 - ab) / ab), (T,)."""
    ab = vp_alpha_bars(kind, timesteps)
    return ((1 - ab) / ab).sqrt()


def spaced_vp_sigmas(kind: str, n: int, timesteps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """``n`` sampling steps on a VP schedule's own timesteps, "trailing" spacing (Lin et al. 2024,
    table 2: the first step starts at t = T, so the sampler sees the full noise level). (n+1,)."""
    sig = vp_sigmas(kind, timesteps)
    idx = torch.round(torch.linspace(timesteps, 0, n + 1, dtype=torch.float64)[:-1]).long() - 1
    return torch.cat([sig[idx.clamp(0, timesteps - 1)], sig.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho,
    then 0. rho = 7 spends more steps at low noise, where detail forms. (n+1,)."""
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


SCHEDULES = ("karras", "linear", "cosine")


def sampling_sigmas(schedule: str, n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The (n+1,) descending sigmas a sampler walks, by schedule name.

    ``linear`` and ``cosine`` use that VP schedule's timesteps (what a DDPM/DDIM user expects)
    clipped to the model's [sigma_min, sigma_max]; ``karras`` spaces [sigma_min, sigma_max] by eq. 5.
    """
    if n < 1:
        raise ValueError(f"sampling steps must be at least 1, got {n}")
    if schedule == "karras":
        return karras_sigmas(n, sigma_min, sigma_max)
    if schedule in ("linear", "cosine"):
        s = spaced_vp_sigmas(schedule, n)
        s[:-1] = s[:-1].clamp(sigma_min, sigma_max)
        return s
    raise ValueError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")


def truncate_for_strength(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): keep the last round(strength * n) steps of an n-step schedule.

    strength 0 keeps only the final 0 (no step: the input comes back unchanged); 1 keeps all.
    """
    n = len(sigmas) - 1
    keep = int(round(strength * n))
    return sigmas[n - keep:]
