"""The diffusion pieces as pure functions: forward process, parameterizations, schedules,
and one shared contract test that every sampler passes on a case with a known answer."""

import math

import pytest
import torch

from genforge.diffusion import schedules
from genforge.diffusion.denoisers import (
    PARAMETERIZATIONS,
    coefficients,
    denoise,
    diffusion_loss,
    x0_weight,
)
from genforge.diffusion.likelihood import ode_bits_per_dim
from genforge.diffusion.samplers import SAMPLERS, guided

MU, VAR = 0.3, 0.25  # data ~ N(MU, VAR) per pixel: the ideal denoiser is analytic


def gaussian_denoiser(x, sigma, cond=None):
    """E[x0 | x0 + sigma n = x] for x0 ~ N(MU, VAR): MU + VAR / (VAR + sigma^2) (x - MU)."""
    s2 = sigma.double()[:, None, None, None] ** 2
    return (MU + VAR / (VAR + s2) * (x.double() - MU)).to(x.dtype)


def test_vp_forward_process_matches_its_closed_form():
    """alpha_bar_t = prod (1 - beta_s); q(x_t | x0) = N(sqrt(ab) x0, (1 - ab) I) is x0 + sigma n scaled."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = schedules.vp_alpha_bars("linear")
    assert torch.allclose(ab, torch.cumprod(1 - betas, 0))
    # Step-by-step forward noising reaches the closed-form marginal at t = 500.
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200000,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for b in betas[:500]:
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert abs(x.mean() - ab[499].sqrt() * 0.7) < 0.01 and abs(x.var() - (1 - ab[499])) < 0.01
    # ... and the VE picture is the same process rescaled: x_vp * sqrt(1 + sigma^2) = x0 + sigma n.
    sigma = schedules.vp_sigmas("linear")[499]
    assert torch.isclose(1 / (1 + sigma**2), ab[499])
    cos = schedules.vp_alpha_bars("cosine")
    assert torch.all(cos[1:] < cos[:-1]) and abs(cos[499] - math.cos((0.5 + 0.008) / 1.008 * math.pi / 2) ** 2) < 1e-3


@pytest.mark.parametrize("kind", PARAMETERIZATIONS)
def test_parameterizations_convert_between_noise_data_and_velocity(kind):
    """A network that outputs the exact target of its parameterization denoises exactly."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 1, 4, 4, generator=g)
    noise = torch.randn(6, 1, 4, 4, generator=g)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 80.0])
    s = sigma[:, None, None, None]
    x = x0 + s * noise
    alpha, sig_vp = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    targets = {"eps": noise, "x0": x0, "v": alpha * noise - sig_vp * x0}
    c_skip, c_out, _, _ = (c[:, None, None, None] for c in coefficients(kind, sigma))
    ideal = targets.get(kind, (x0 - c_skip * x) / c_out)

    def oracle(x_in, c_noise, cond):
        return ideal

    assert torch.allclose(denoise(oracle, kind, x, sigma, None), x0, atol=1e-4)
    assert torch.allclose(diffusion_loss(oracle, kind, x0, sigma, noise, None), torch.zeros(6), atol=1e-6)


def test_native_weights_and_min_snr():
    sigma = torch.tensor([0.1, 1.0, 10.0])
    assert torch.allclose(x0_weight("eps", sigma), 1 / sigma**2)
    assert torch.allclose(x0_weight("v", sigma), 1 / sigma**2 + 1)
    assert torch.allclose(x0_weight("eps", sigma, min_snr_gamma=5.0), torch.tensor([5.0, 1.0, 0.01]))


def test_schedules():
    k = schedules.karras_sigmas(10, 0.002, 80.0)
    assert len(k) == 11 and k[0] == 80.0 and abs(k[-2] - 0.002) < 1e-9 and k[-1] == 0
    assert torch.all(k[1:] < k[:-1])
    for kind in ("linear", "cosine"):
        s = schedules.sampling_sigmas(kind, 7, 0.01, 80.0)
        assert len(s) == 8 and s[-1] == 0 and torch.all(s[1:] < s[:-1]) and s[0] == 80.0
    assert torch.equal(schedules.truncate_for_strength(k, 0.0), k[-1:])
    assert torch.equal(schedules.truncate_for_strength(k, 1.0), k)
    with pytest.raises(ValueError):
        schedules.sampling_sigmas("nope", 5, 0.1, 1.0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_contract(name):
    """Every sampler: shape, determinism under a seed, a callback per step, and convergence to
    the known answer (Gaussian data: mean MU, variance VAR) with the ideal denoiser."""
    sampler = SAMPLERS[name]
    # Ancestral DDPM plugs E[x0 | x] into the posterior and so misses Var[x0 | x] on each
    # step: it is exact only as the steps shrink (Ho et al. used 1000); the ODE solvers are
    # accurate at 60.
    n_steps = 1000 if name == "ddpm" else 60
    sigmas = schedules.karras_sigmas(n_steps, 0.002, 80.0)

    def draw(seed, n=4000, callback=None):
        g = torch.Generator().manual_seed(seed)
        x = sigmas[0].item() * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
        return sampler(gaussian_denoiser, x, sigmas, generator=g, callback=callback)

    steps = []
    out = draw(0, callback=lambda info: steps.append(info["step"]))
    assert out.shape == (4000, 1, 2, 2) and out.dtype == torch.float64
    assert steps == list(range(n_steps))
    assert torch.equal(draw(3, n=8), draw(3, n=8))
    assert abs(out.mean().item() - MU) < 0.03, out.mean()
    assert abs(out.var().item() / VAR - 1) < 0.08, out.var()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_takes_any_step_count(name):
    for n in (1, 2, 7):
        sigmas = schedules.karras_sigmas(n, 0.002, 80.0)
        x = 80.0 * torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        out = SAMPLERS[name](gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(1))
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_guidance_at_scale_one_is_the_conditional_denoiser():
    def denoiser(x, sigma, cond):  # conditional shift by the label, none when uncond
        shift = torch.where(cond["uncond"], 0.0, cond["labels"].float())[:, None, None, None]
        return x * 0.5 + shift

    cond = {"labels": torch.tensor([1, 2, 3]), "uncond": torch.zeros(3, dtype=torch.bool)}
    x, s = torch.randn(3, 1, 2, 2), torch.ones(3)
    assert torch.equal(guided(denoiser, cond, 1.0)(x, s), denoiser(x, s, cond))
    # w = 3: D_u + 3 (D_c - D_u) = x/2 + 3 * label
    assert torch.allclose(guided(denoiser, cond, 3.0)(x, s), x * 0.5 + 3 * cond["labels"][:, None, None, None])


def test_ode_bits_per_dim_of_a_gaussian_matches_its_entropy():
    """For data ~ N(MU, VAR) the exact NLL is known: the ODE estimate (with the ideal denoiser)
    must land on it. Continuous data here: a tiny bin makes the dequantization negligible."""
    g = torch.Generator().manual_seed(0)
    x = MU + VAR**0.5 * torch.randn(512, 1, 2, 2, generator=g, dtype=torch.float64)
    sigmas = schedules.likelihood_sigmas(60, 0.002, 80.0)
    bin_width = 1e-3
    bits = ode_bits_per_dim(gaussian_denoiser, x, sigmas, g, bin_width=bin_width, sigma_data=VAR**0.5)
    nll = 0.5 * ((x - MU) ** 2 / VAR + math.log(2 * math.pi * VAR)).flatten(1).sum(1) / 4
    exact = (nll - math.log(bin_width)) / math.log(2)
    assert abs(bits.mean() - exact.mean()) < 0.02


# The [sigma_min, sigma_max] of each training noise (families/diffusion.py): EDM's log-normal,
# and the curves of linear and cosine DDPM training (cosine's top is capped at 160).
MODEL_RANGES = {"lognormal": (0.002, 80.0),
                "linear": (float(schedules.vp_sigmas("linear")[0]), min(float(schedules.vp_sigmas("linear")[-1]), 160.0)),
                "cosine": (float(schedules.vp_sigmas("cosine")[0]), 160.0)}
STEP_COUNTS = (1, 2, 3, 20, 200, 1000)


@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
@pytest.mark.parametrize("noise", sorted(MODEL_RANGES))
def test_every_schedule_strictly_decreases_at_every_step_count(schedule, noise):
    """Issue #16: clamping the linear schedule to sigma_max repeated levels (dpmpp-2m divided by
    a zero-length step). n steps are n distinct levels inside the model's range, then 0."""
    lo, hi = MODEL_RANGES[noise]
    for n in (*STEP_COUNTS, 4000):
        s = schedules.sampling_sigmas(schedule, n, lo, hi)
        assert len(s) == n + 1 and s[-1] == 0 and torch.isfinite(s).all(), (n, s)
        assert torch.all(s[1:] < s[:-1]), (n, s[:8])
        assert s[0] <= hi and s[-2] >= lo * (1 - 1e-12), (n, s[0], s[-2])
        schedules.check_sigmas(s)


def test_vp_schedule_on_its_whole_curve_walks_its_training_timesteps():
    """Trailing spacing (Lin et al. 2024): T steps are exactly the T training levels, from the top."""
    levels = schedules.vp_sigmas("linear")
    s = schedules.sampling_sigmas("linear", 1000, 0.0, 1e9)
    assert torch.allclose(s[:-1], levels.flip(0), rtol=1e-12)
    two = schedules.sampling_sigmas("linear", 2, 0.0, 1e9)
    assert torch.allclose(two[:-1], levels[[999, 499]], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("schedule", schedules.SCHEDULES)
def test_every_sampler_with_every_schedule_and_step_count(name, schedule):
    """Finite samples and one callback per step, for every sampler x schedule x step count
    (dpmpp-2m with linear at 20 or cosine at 200 and 1000 steps crashed, issue #16)."""
    steps: list[int] = []
    for lo, hi in MODEL_RANGES.values():
        for n in STEP_COUNTS:
            sigmas = schedules.sampling_sigmas(schedule, n, lo, hi)
            g = torch.Generator().manual_seed(n)
            x = float(sigmas[0]) * torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)
            steps.clear()
            out = SAMPLERS[name](gaussian_denoiser, x, sigmas, generator=g, callback=lambda i: steps.append(i["step"]))
            assert torch.isfinite(out).all(), (schedule, n, lo, hi)
            assert steps == list(range(n))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_refuse_a_repeated_level(name):
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="strictly decreasing"):
        SAMPLERS[name](gaussian_denoiser, x, torch.tensor([80.0, 80.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="ending at 0"):
        SAMPLERS[name](gaussian_denoiser, x, torch.tensor([80.0, 1.0]))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_bits_per_dim_runs_exactly_the_requested_ode_steps(n):
    """Issue #16: n steps ran n-1 (one step ran none). n Heun steps are 2n denoiser calls."""
    calls = []

    def counted(x, sigma, cond=None):
        calls.append(float(sigma[0]))
        return gaussian_denoiser(x, sigma, cond)

    sigmas = schedules.likelihood_sigmas(n, 0.002, 80.0)
    assert len(sigmas) == n + 1 and sigmas[0] == pytest.approx(0.002) and sigmas[-1] == pytest.approx(80.0)
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    bits = ode_bits_per_dim(counted, x, sigmas, torch.Generator().manual_seed(0))
    assert len(calls) == 2 * n and torch.isfinite(bits).all()
    with pytest.raises(ValueError):
        ode_bits_per_dim(counted, x, sigmas[:1], torch.Generator().manual_seed(0))
