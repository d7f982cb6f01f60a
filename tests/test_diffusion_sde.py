"""SDE-DPM-Solver++(2M) (``dpmpp-2m-sde``): at eta = 0 it is the ODE solver dpmpp-2m, its first
step at eta = 1 is the DDPM posterior step, its noise has the stated standard deviation, and the
family accepts it. The shared sampler contract (convergence on Gaussian data, every schedule and
step count, refusing a repeated level) covers it through ``SAMPLERS`` in
tests/test_diffusion_pieces.py."""

import math

import pytest
import torch

from genforge.diffusion import schedules
from genforge.diffusion.samplers import SAMPLERS, sample_ddpm, sample_dpmpp_2m, sample_dpmpp_2m_sde

MU, VAR = 0.3, 0.25


def gaussian_denoiser(x, sigma, cond=None):
    """The exact denoiser of N(MU, VAR) data: E[x0 | x] at level sigma."""
    s2 = sigma.double()[:, None, None, None] ** 2
    return (MU + VAR / (VAR + s2) * (x.double() - MU)).to(x.dtype)


def _start(n=6, seed=0):
    return 80.0 * torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_eta_zero_is_the_ode_solver_and_draws_no_noise():
    sigmas = schedules.karras_sigmas(12, 0.002, 80.0)
    x = _start()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = sample_dpmpp_2m_sde(gaussian_denoiser, x, sigmas, generator=g, eta=0.0)
    torch.testing.assert_close(out, sample_dpmpp_2m(gaussian_denoiser, x, sigmas), rtol=1e-12, atol=1e-12)
    assert torch.equal(g.get_state(), state)


def test_two_levels_at_eta_one_are_exactly_ddpm():
    """On [s, s1, 0] there is no multistep correction yet: the first step is the DDPM posterior
    step (same mean, same noise scale, same draw from the generator) and the last returns D."""
    sigmas = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    x = _start()
    a = sample_dpmpp_2m_sde(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(7))
    b = sample_ddpm(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_multistep_correction_uses_the_previous_denoised():
    """With D(x, sigma) = c(sigma), a constant per level, the x-terms vanish from the correction,
    so step 2 from x1 adds exactly weight / (2r) (D_2 - D_1) beyond the first-order update."""
    s0, s1, s2 = 4.0, 2.0, 0.5
    sigmas = torch.tensor([s0, s1, s2, 0.0], dtype=torch.float64)
    seen = []

    def constant(x, sigma, cond=None):
        return torch.full_like(x, float(sigma[0]) / 10)

    sample_dpmpp_2m_sde(constant, torch.zeros(1, 1, 1, 1, dtype=torch.float64), sigmas, eta=0.0,
                        callback=seen.append)
    h1, h2 = math.log(s0 / s1), math.log(s1 / s2)
    x1 = -math.expm1(-h1) * s0 / 10
    weight = -math.expm1(-h2)
    want = (s2 / s1) * x1 + weight * s1 / 10 + weight / (2 * h1 / h2) * (s1 / 10 - s0 / 10)
    assert seen[0]["x"].item() == pytest.approx(x1, rel=1e-12)
    assert seen[1]["x"].item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("eta", "s_noise"), [(1.0, 1.0), (0.5, 1.2)])
def test_fresh_noise_has_the_stated_standard_deviation(eta, s_noise):
    """D = 0, x = 0: after the first step x is pure noise of sd S_noise s1 sqrt(1 - e^{-2 eta h})."""
    s, s1 = 2.0, 1.0
    seen = []
    sample_dpmpp_2m_sde(lambda x, sigma, cond=None: torch.zeros_like(x), torch.zeros(40000, 1, 1, 1, dtype=torch.float64),
                        torch.tensor([s, s1, 0.0], dtype=torch.float64), generator=torch.Generator().manual_seed(0),
                        callback=seen.append, eta=eta, s_noise=s_noise)
    want = s_noise * s1 * math.sqrt(1 - math.exp(-2 * eta * math.log(s / s1)))
    assert seen[0]["x"].std().item() == pytest.approx(want, rel=0.02)


def test_samples_of_gaussian_data_have_its_moments():
    """The SDE on the exact denoiser lands on N(MU, VAR) (200 steps: at 20 the discretization
    still inflates the variance by ~20%, as it does for dpmpp-2m and heun-churn)."""
    x = 80.0 * torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample_dpmpp_2m_sde(gaussian_denoiser, x, schedules.karras_sigmas(200, 0.002, 80.0),
                              generator=torch.Generator().manual_seed(1))
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.var().item() == pytest.approx(VAR, rel=0.05)


@pytest.mark.parametrize("bad", [{"eta": -0.1}, {"eta": math.nan}, {"s_noise": -1.0}, {"s_noise": math.inf}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError, match="eta|S_noise"):
        sample_dpmpp_2m_sde(gaussian_denoiser, _start(), schedules.karras_sigmas(4, 0.002, 80.0), **bad)


def test_the_family_accepts_it_as_a_run_default():
    from genforge.families.diffusion import DiffusionConfig

    assert "dpmpp-2m-sde" in SAMPLERS
    assert DiffusionConfig(sampler="dpmpp-2m-sde").sampler == "dpmpp-2m-sde"
