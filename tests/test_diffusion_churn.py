"""Karras et al. 2022's stochastic sampler (algorithm 2, ``heun-churn``): where it adds noise, how
much, that it is Heun without churn, and that the family lets a run choose it. The shared
sampler contract (convergence on Gaussian data, every schedule and step count, refusing a
repeated level) covers it through ``SAMPLERS`` in tests/test_diffusion_pieces.py."""

import math
import typing

import pytest
import torch

from genforge.diffusion import schedules
from genforge.diffusion.samplers import SAMPLERS, sample_heun, sample_heun_churn

MU, VAR = 0.3, 0.25


def gaussian_denoiser(x, sigma, cond=None):
    s2 = sigma.double()[:, None, None, None] ** 2
    return (MU + VAR / (VAR + s2) * (x.double() - MU)).to(x.dtype)


def _start(n=6, seed=0):
    return 80.0 * torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_no_churn_is_exactly_heun_and_draws_no_noise():
    sigmas = schedules.karras_sigmas(12, 0.002, 80.0)
    x = _start()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    out = sample_heun_churn(gaussian_denoiser, x, sigmas, generator=g, s_churn=0.0)
    assert torch.equal(out, sample_heun(gaussian_denoiser, x, sigmas))
    assert torch.equal(g.get_state(), state)  # gamma = 0 everywhere: no fresh noise drawn
    # Churn switched on, but no level inside [S_tmin, S_tmax]: Heun again.
    out = sample_heun_churn(gaussian_denoiser, x, sigmas, generator=g, s_churn=40.0, s_tmin=100.0, s_tmax=200.0)
    assert torch.equal(out, sample_heun(gaussian_denoiser, x, sigmas))


def test_churn_raises_the_level_only_inside_its_window():
    """The first evaluation of each step is at s_hat = (1 + gamma) s for s in [S_tmin, S_tmax],
    gamma = min(S_churn / n, sqrt(2) - 1); at s elsewhere; the second at the next level."""
    n = 10
    sigmas = schedules.karras_sigmas(n, 0.002, 80.0)
    calls: list[float] = []

    def recording(x, sigma, cond=None):
        calls.append(float(sigma[0]))
        return gaussian_denoiser(x, sigma)

    s_tmin, s_tmax = 0.1, 10.0
    for churn, gamma in ((2.0, 0.2), (40.0, math.sqrt(2) - 1)):
        calls.clear()
        sample_heun_churn(recording, _start(), sigmas, generator=torch.Generator().manual_seed(0),
                          s_churn=churn, s_tmin=s_tmin, s_tmax=s_tmax)
        expected = []
        for i in range(n):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            expected.append(s * (1 + gamma) if s_tmin <= s <= s_tmax else s)
            if s_next > 0:
                expected.append(s_next)
        assert calls == pytest.approx(expected, rel=1e-12)
        assert any(c != s for c, s in zip(calls[::2], sigmas.tolist(), strict=False))  # some churn happened


@pytest.mark.parametrize("s_noise", [1.0, 1.5])
def test_fresh_noise_has_the_algorithms_standard_deviation(s_noise):
    """With D = 0, x0 = 0 and levels [s, s1, 0], the first step maps the churned x_hat to
    x_hat s1 / s_hat, and x_hat = S_noise sqrt(s_hat^2 - s^2) z: a known standard deviation."""
    s, s1 = 2.0, 1.0
    sigmas = torch.tensor([s, s1, 0.0], dtype=torch.float64)
    seen = []
    x = torch.zeros(40000, 1, 1, 1, dtype=torch.float64)
    sample_heun_churn(lambda x, sigma, cond=None: torch.zeros_like(x), x, sigmas,
                      generator=torch.Generator().manual_seed(0), callback=seen.append,
                      s_churn=0.4, s_tmin=1.5, s_tmax=3.0, s_noise=s_noise)
    s_hat = s * 1.2  # gamma = 0.4 / 2 steps
    want = s_noise * math.sqrt(s_hat**2 - s**2) * s1 / s_hat
    assert seen[0]["x"].std().item() == pytest.approx(want, rel=0.02)
    assert seen[1]["x"].abs().max().item() == 0.0  # s1 is outside the window: no noise at the last step


def test_zero_steps_return_the_input():
    """SDEdit at strength 0 hands over the level list [0]: no step, no division by n = 0."""
    x = _start()
    assert torch.equal(sample_heun_churn(gaussian_denoiser, x, torch.tensor([0.0], dtype=torch.float64)), x)


def test_same_seed_same_samples_and_different_seeds_differ():
    sigmas = schedules.karras_sigmas(8, 0.002, 80.0)
    x = _start()
    a = SAMPLERS["heun-churn"](gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(1))
    b = SAMPLERS["heun-churn"](gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(1))
    c = SAMPLERS["heun-churn"](gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [{"s_churn": -1.0}, {"s_churn": math.inf}, {"s_tmin": 2.0, "s_tmax": 1.0},
                                 {"s_tmin": -0.1}, {"s_noise": 0.0}, {"s_noise": math.nan}])
def test_bad_churn_parameters_are_refused(bad):
    with pytest.raises(ValueError, match="S_"):
        sample_heun_churn(gaussian_denoiser, _start(), schedules.karras_sigmas(4, 0.002, 80.0), **bad)


def test_every_registered_sampler_is_a_valid_run_default():
    """The config's Literal and the registry must agree, or a new sampler is selectable on the
    command line but refused as a preset's default (and vice versa)."""
    from genforge.families.diffusion import DiffusionConfig

    allowed = typing.get_args(DiffusionConfig.model_fields["sampler"].annotation)
    assert set(allowed) == set(SAMPLERS)
    DiffusionConfig(sampler="heun-churn")
