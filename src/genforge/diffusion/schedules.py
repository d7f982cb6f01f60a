"""Noise schedules as pure functions. Every function returns float64 sigmas on the CPU.

Sampling schedules are strictly descending and end with an appended 0: ``n`` steps use
``n + 1`` distinct entries, and the last step lands exactly on the data (sigma = 0).
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


def _position(log_levels: torch.Tensor, log_sigma: float) -> float:
    """The fractional timestep index where the increasing curve ``log_levels`` (T,) reaches
    ``log_sigma`` (clamped to the curve's ends); the inverse of :func:`_level_at`."""
    t = len(log_levels)
    i = int(torch.searchsorted(log_levels, torch.tensor([log_sigma], dtype=torch.float64))[0])
    if i <= 0:
        return 0.0
    if i >= t:
        return float(t - 1)
    lo, hi = float(log_levels[i - 1]), float(log_levels[i])
    return i - 1 + (log_sigma - lo) / (hi - lo)


def _level_at(log_levels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """log sigma at fractional timestep indexes: linear between neighbouring timesteps, so a
    strictly increasing curve stays strictly increasing between its integer levels."""
    i = positions.floor().long().clamp(0, len(log_levels) - 2)
    frac = positions - i
    return log_levels[i] * (1 - frac) + log_levels[i + 1] * frac


def vp_curve_sigmas(kind: str, n: int, sigma_min: float, sigma_max: float,
                    timesteps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """``n`` strictly decreasing sampling levels on a VP schedule's noise curve, then 0. (n+1,).

    The part of the curve inside the model's [sigma_min, sigma_max] is taken as a function of
    the timestep (log sigma linear between timesteps) and spaced "trailing" (Lin et al. 2024,
    table 2): the first level is the top of that part (the sampler sees the full noise level)
    and the n steps divide it down to one timestep below its bottom, so ``n`` = T on the full
    curve walks exactly the T training timesteps. When ``n`` is more than the timesteps in the
    range, the levels are spaced evenly from top to bottom instead. Never clamping to the
    range (which merged levels, issue #16) keeps every level distinct for any ``n``.
    """
    log_levels = vp_sigmas(kind, timesteps).log()  # (T,), strictly increasing in t
    lo = max(sigma_min, float(log_levels[0].exp()))
    hi = min(sigma_max, float(log_levels[-1].exp()))
    if not lo < hi:
        raise ValueError(f"the {kind} schedule has no noise levels in [{sigma_min}, {sigma_max}]")
    top, bottom = _position(log_levels, math.log(hi)), _position(log_levels, math.log(lo))
    spacing = (top - bottom + 1) / n  # trailing: n equal steps from the top to one timestep below the bottom
    if n > 1:
        spacing = min(spacing, (top - bottom) / (n - 1))  # never below the bottom
    positions = top - spacing * torch.arange(n, dtype=torch.float64)
    sigmas = _level_at(log_levels, positions).exp().clamp(lo, hi)  # clamp: rounding at the two ends only
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho,
    then 0. rho = 7 spends more steps at low noise, where detail forms. (n+1,)."""
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def likelihood_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The (n+1,) ascending levels, sigma_min to sigma_max, of ``n`` ODE steps for bits/dim:
    Karras spacing with both ends included (n+1 levels are n steps; issue #16 ran n-1)."""
    if n < 1:
        raise ValueError(f"likelihood steps must be at least 1, got {n}")
    return karras_sigmas(n + 1, sigma_min, sigma_max)[:-1].flip(0)


SCHEDULES = ("karras", "linear", "cosine")


def sampling_sigmas(schedule: str, n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The (n+1,) descending sigmas a sampler walks, by schedule name.

    ``linear`` and ``cosine`` walk that VP schedule's noise curve (what a DDPM/DDIM user expects)
    within the model's [sigma_min, sigma_max]; ``karras`` spaces [sigma_min, sigma_max] by eq. 5.
    Every schedule is strictly decreasing for every ``n`` (a repeated level is a zero-length
    step: DPM-Solver++ divides by it); :func:`check_sigmas` is the contract.
    """
    if n < 1:
        raise ValueError(f"sampling steps must be at least 1, got {n}")
    if schedule == "karras":
        return karras_sigmas(n, sigma_min, sigma_max)
    if schedule in ("linear", "cosine"):
        return vp_curve_sigmas(schedule, n, sigma_min, sigma_max)
    raise ValueError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")


def check_sigmas(sigmas: torch.Tensor) -> None:
    """The samplers' contract on a sigma list (n+1,): finite, strictly decreasing, ending at 0."""
    if sigmas.dim() != 1 or len(sigmas) < 1 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must be a 1-d list ending at 0, got {sigmas.tolist()[:8]}")
    if not (torch.isfinite(sigmas).all() and (sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be finite and strictly decreasing (a repeated level is a "
                         "zero-length step)")


def truncate_for_strength(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): keep the last round(strength * n) steps of an n-step schedule.

    strength 0 keeps only the final 0 (no step: the input comes back unchanged); 1 keeps all.
    """
    n = len(sigmas) - 1
    keep = int(round(strength * n))
    return sigmas[n - keep:]
