"""Tree-Ring: a keyed ring pattern in the Fourier transform of a diffusion model's initial noise
(Wen et al. 2023, "Tree-Ring Watermarks", arXiv 2305.20030).

Marking: the centred 2-D FFT (orthonormal) of the unit noise x_T / sigma_max, (n, C, H, W), gets
its coefficients inside radius r replaced by key values drawn like white N(0, 1) noise's own
spectrum: complex N(0, 1) per conjugate pair, mirrored as its conjugate (Hermitian, so the marked
noise is real and keeps its statistics exactly). This is the paper's "Tree-Ring_Rand" pattern
(sec. 3.2). Their rotation-invariant "Rings" variant (one real value per ring) was tried first and
dropped: on 8x8 images it has 2 key values per channel, and a real-valued key leaves the ring's
imaginary parts at zero, a shift any key's test rewards (Ci et al. 2024, RingID, arXiv 2404.14055):
24 marked digits tested under another key scored p = 1e-6. Rotation is not in our attack list.

Detection: DDIM inversion (the deterministic probability-flow ODE run backwards with Euler steps,
the run's own denoiser, unconditional as the paper's empty prompt) maps an image back to y ~ x_T.
What is tested, and why it departs from the paper: Wen et al. (sec. 3.3) treat y as random and k
fixed: under H0 the ring coefficients of y are N(0, sigma^2) with sigma^2 estimated from y, so
sum |k - y|^2 / sigma^2 is noncentral chi-square. That null is about y's *distribution*, and the
inverted noise of a small model's images is not N(0, sigma^2): a mark changes its variance and
structure, and 24 marked digits tested under another key scored p ~ 1e-17. Here the randomness
is the key's: k's ring coordinates are iid N(0, 1) and independent of any image not made with
it, so the cosine of y's ring with k has a known null *whatever y is* (t = sqrt(D-1) cos /
sqrt(1 - cos^2) ~ Student t, D - 1 dof; :func:`cosine_test`). Only the independent real degrees
of freedom count (y is real: F(-f) = conj F(f); each conjugate pair once, plus DC). The cosine,
unlike the plain projection <y, k> / |y| ~ N(0, 1), is not capped at |k| ~ sqrt(D) (3.6 for
the 13 coefficients of an 8x8 ring), so a faithful inversion or a grid can reach small p-values.
A grid of n images is tested by the cosine of the mean ring (:func:`combined_pvalue`), exact
however the images depend on each other. The false-positive guarantee is over keys: for a random
key, any fixed unmarked image is flagged at level alpha with probability alpha.

Size: the paper marks radius 10 of a 64x64 latent (about 8% of the coefficients);
:func:`default_radius` keeps that share, with at least radius 2 (13 coefficients) so that 8x8
images still carry a testable ring. Low frequencies decide a small image's layout, so the mark
costs more quality there; the benchmark (benchmarks/bench_watermark_image.py) measures it.
"""

from __future__ import annotations

import math

import torch

from genforge import GenforgeError
from genforge.data.images import to_signed
from genforge.diffusion import schedules

INVERSION_STEPS = 50  # the paper inverts with 50 DDIM steps
PURPOSE = "image/tree-ring/v1"  # the HMAC sub-key's purpose (watermark.keys.derive)
# Samplers that walk the probability-flow ODE with no fresh noise: x_T alone decides the image,
# so inverting the image recovers x_T. ddim counts only at eta = 0.
DETERMINISTIC_SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m")


def default_radius(h: int, w: int) -> int:
    """Rings r: the paper's share (r = 10 on 64x64, ~8% of the coefficients), at least 2, and
    below the Nyquist frequency so every ring is symmetric under f -> -f."""
    r = max(2, round(min(h, w) * 10 / 64))
    return min(r, (min(h, w) - 1) // 2)


def _offsets(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency offsets (H, W) from the centre of a centred (fftshift-ed) spectrum."""
    fy = torch.arange(h) - h // 2
    fx = torch.arange(w) - w // 2
    return fy[:, None].expand(h, w), fx[None, :].expand(h, w)


def ring_index(h: int, w: int, radius: int) -> torch.Tensor:
    """(H, W) long: ring i in 1..radius of each centred frequency (|f| <= i, DC in ring 1), 0 outside."""
    if not 1 <= radius <= (min(h, w) - 1) // 2:
        raise GenforgeError(f"Tree-Ring radius {radius} does not fit {h}x{w} images; use 1.."
                            f"{(min(h, w) - 1) // 2}")
    fy, fx = _offsets(h, w)
    dist = (fy.double() ** 2 + fx.double() ** 2).sqrt()
    ring = dist.ceil().long().clamp(min=1)
    return torch.where(dist <= radius, ring, torch.zeros_like(ring))


def key_pattern(key: bytes, shape: tuple[int, int, int], radius: int) -> torch.Tensor:
    """The key's centred spectrum (C, H, W) complex128, zero outside radius ``radius``: inside,
    one complex N(0, 1) value per conjugate pair (real and imaginary parts N(0, 1/2)), its
    conjugate at -f, and a real N(0, 1) at DC: the spectrum of white N(0, 1) noise, so Hermitian
    (the marked noise is real) and with the noise's own statistics. ``key``: the run key (a
    sub-key is derived for this use)."""
    from genforge.watermark.keys import derive

    c, h, w = shape
    inside = ring_index(h, w, radius) > 0
    fy, fx = _offsets(h, w)
    g = torch.Generator().manual_seed(int.from_bytes(derive(key, PURPOSE)[:8], "little"))
    re, im = (torch.randn(c, h, w, generator=g, dtype=torch.float64) / math.sqrt(2) for _ in range(2))
    half = inside & ((fy > 0) | ((fy == 0) & (fx > 0)))
    k = torch.complex(re, im) * half
    mirror = torch.zeros_like(k)  # F(-f) = conj F(f): index i -> 2 * centre - i
    ys, xs = half.nonzero(as_tuple=True)
    mirror[:, 2 * (h // 2) - ys, 2 * (w // 2) - xs] = k[:, ys, xs].conj()
    dc = torch.zeros(h, w, dtype=torch.bool)
    dc[h // 2, w // 2] = True
    return k + mirror + torch.complex(re * math.sqrt(2), torch.zeros_like(re)) * dc


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(x.double(), norm="ortho"), dim=(-2, -1))


def mark_noise(noise: torch.Tensor, key: bytes, radius: int | None = None) -> torch.Tensor:
    """Unit Gaussian noise (n, C, H, W) -> the same with its ring coefficients set to the key's."""
    c, h, w = noise.shape[1:]
    radius = radius or default_radius(h, w)
    inside = ring_index(h, w, radius) > 0
    spec = _spectrum(noise)
    pattern = key_pattern(key, (c, h, w), radius).to(noise.device)
    spec = torch.where(inside.to(noise.device), pattern, spec)
    x = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm="ortho")
    return x.real.to(noise.dtype)  # the pattern is Hermitian: the imaginary part is rounding only


def _unconditional(model, n: int, device) -> dict | None:
    """The condition the paper inverts with (an empty prompt): every row marked unconditional."""
    if not model.conditioning_classes and not model.prompt_conditioned:
        return None
    uncond = torch.ones(n, dtype=torch.bool, device=device)
    if model.prompt_conditioned:
        return {**model.encode_prompts([""] * n), "uncond": uncond}
    return {"labels": torch.zeros(n, dtype=torch.long, device=device), "uncond": uncond}


@torch.no_grad()
def invert(model, images: torch.Tensor, steps: int = INVERSION_STEPS) -> torch.Tensor:
    """DDIM inversion: images (n, C, H, W) in the run's pixel range -> the unit noise x_T / sigma_max
    that the deterministic sampler would turn into them. Euler steps of the probability-flow ODE
    dx/dsigma = (x - D(x, sigma)) / sigma up the Karras levels from sigma_min (the image) to
    sigma_max, with D evaluated at the lower level (Song et al. 2021, DDIM, eq. 13 run forwards)."""
    device = next(model.parameters()).device
    x = to_signed(images.to(device).float(), model.spec.pixel_range)
    levels = schedules.sampling_sigmas("karras", steps, model.sigma_min, model.sigma_max)[:-1].flip(0)
    cond = _unconditional(model, x.shape[0], device)
    was_training = model.training
    model.eval()
    try:
        for s, s_next in zip(levels[:-1].tolist(), levels[1:].tolist(), strict=True):
            sigma = torch.full((x.shape[0],), s, device=device)
            x = x + (x - model.denoiser(x, sigma, cond)) / s * (s_next - s)
    finally:
        model.train(was_training)
    return x / float(levels[-1])


def _real_dof(spec: torch.Tensor, radius: int) -> torch.Tensor:
    """Centred spectra (..., C, H, W) of real images -> (..., D) float64: the ring's independent
    real degrees of freedom, each conjugate pair counted once (sqrt(2) Re, sqrt(2) Im of the
    upper-half-plane member) plus the real DC term; D = C (2 |half| + 1). The sqrt(2) makes the
    key's coordinates iid N(0, 1) (see :func:`key_pattern`) and keeps inner products equal to
    the full ring's: <dof(a), dof(b)> = Re sum_ring a conj(b)."""
    h, w = spec.shape[-2:]
    inside = ring_index(h, w, radius) > 0
    fy, fx = _offsets(h, w)
    half = inside & ((fy > 0) | ((fy == 0) & (fx > 0)))
    dc = (fy == 0) & (fx == 0)
    parts = [math.sqrt(2) * spec[..., half].real, math.sqrt(2) * spec[..., half].imag, spec[..., dc].real]
    return torch.cat(parts, dim=-1).flatten(-2)


def cosine_test(y: torch.Tensor, k: torch.Tensor) -> dict:
    """One-sided test of y (D,) against key k (D,): {p_value, cos, t, dof}.

    Under H0 the key is iid N(0, 1) and independent of y (an unmarked image, or an image marked
    with another key), so k's direction is uniform on the sphere whatever y is, and with
    a = <y/|y|, k> ~ N(0, 1) and |k_perp|^2 ~ chi^2(D - 1) independent of a,
    t = sqrt(D - 1) cos / sqrt(1 - cos^2) = a / sqrt(|k_perp|^2 / (D - 1)) is Student t with D - 1
    dof exactly. A mark pulls y towards k, so the p-value is the upper tail."""
    try:
        from scipy.stats import t as student_t
    except ImportError:
        raise GenforgeError("Tree-Ring detection needs SciPy: pip install 'genforge[images]'") from None
    d = k.numel()
    ny, nk = float(y.norm()), float(k.norm())
    if not (ny > 0 and nk > 0):
        return {"p_value": 1.0, "cos": 0.0, "t": 0.0, "dof": d - 1}
    cos = max(-1.0, min(1.0, float(y @ k) / (ny * nk)))
    t = math.sqrt(d - 1) * cos / math.sqrt(max(1 - cos * cos, 1e-300))
    return {"p_value": float(student_t.sf(t, d - 1)), "cos": cos, "t": t, "dof": d - 1}


def ring_coordinates(noise: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Recovered noises (n, C, H, W) -> (n, D) float64: the ring's independent real coordinates
    (see :func:`_real_dof`); the key's are ``ring_coordinates`` of :func:`key_pattern`."""
    radius = radius or default_radius(*noise.shape[-2:])
    return _real_dof(_spectrum(noise.cpu()), radius)


def key_coordinates(key: bytes, shape: tuple[int, int, int], radius: int | None = None) -> torch.Tensor:
    """The key's ring coordinates (D,), iid N(0, 1) over keys."""
    radius = radius or default_radius(*shape[-2:])
    return _real_dof(key_pattern(key, shape, radius), radius)


def ring_pvalues(noise: torch.Tensor, key: bytes, radius: int | None = None) -> list[dict]:
    """The key test on recovered noises (n, C, H, W), one per image: see :func:`cosine_test`."""
    c, h, w = noise.shape[1:]
    radius = radius or default_radius(h, w)
    k = _real_dof(key_pattern(key, (c, h, w), radius), radius)
    return [cosine_test(y, k) for y in _real_dof(_spectrum(noise.cpu()), radius)]


def combined_pvalue(noise: torch.Tensor, key: bytes, radius: int | None = None) -> dict:
    """One test for n images (n, C, H, W) that all carry (or not) the same key: the cosine of the
    *mean* recovered ring with k. The mean is a function of the images alone, so the null holds
    exactly however the images depend on each other (Fisher's method, or sum_i <y_i, k> /
    sqrt(sum_i |y_i|^2), would assume independent or orthogonal y_i: inverted noises share a
    systematic part); marks add up n-fold while independent inversion errors shrink as 1/sqrt(n)."""
    c, h, w = noise.shape[1:]
    radius = radius or default_radius(h, w)
    k = _real_dof(key_pattern(key, (c, h, w), radius), radius)
    return cosine_test(_real_dof(_spectrum(noise.cpu()), radius).mean(0), k)


def detect_all(model, images: torch.Tensor, key: bytes, radius: int | None = None,
                steps: int = INVERSION_STEPS, batch_size: int = 64) -> tuple[list[dict], dict]:
    """Tree-Ring test of images (n, C, H, W) in the run's pixel range against ``key``, with the
    diffusion run's ``model``: (one dict per image, one for all n together)."""
    noise = torch.cat([invert(model, images[s:s + batch_size], steps).cpu()
                       for s in range(0, images.shape[0], batch_size)])
    return ring_pvalues(noise, key, radius), combined_pvalue(noise, key, radius)


def detect(model, images: torch.Tensor, key: bytes, radius: int | None = None,
           steps: int = INVERSION_STEPS, batch_size: int = 64) -> list[dict]:
    """Per-image Tree-Ring tests of images (n, C, H, W) (see :func:`detect_all`)."""
    return detect_all(model, images, key, radius, steps, batch_size)[0]
