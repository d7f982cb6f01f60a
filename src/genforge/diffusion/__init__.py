"""Diffusion, in four pieces with narrow contracts (the k-diffusion shape, Karras et al. 2022):

- the network (``genforge.nn.unet.UNet``): ``net(x_in, c_noise, cond) -> F``;
- the parameterization (``denoisers.py``): wraps the network into a denoiser
  ``D(x, sigma, cond) -> x0_hat`` and owns the loss weighting;
- the noise schedule (``schedules.py``): pure functions returning sigmas;
- the samplers (``samplers.py``): ``sampler(denoiser, x, sigmas, *, cond, guidance,
  generator, callback)``.

Everything works in the variance-exploding picture x = x0 + sigma * noise. A
variance-preserving (DDPM) model at level t is the same thing rescaled:
x_vp = x / sqrt(1 + sigma^2), sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t).
"""
