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
The paper's test (sec. 3.3, "Detecting the watermark"): under H0 (no mark) the ring coefficients
of y are Gaussian with variance sigma^2, so eta = sum |k - y|^2 / sigma^2 is (for a fixed k) noncentral chi-square
with noncentrality lambda = sum |k|^2 / sigma^2; marked images sit close to k, so the p-value is
the lower tail P(chi^2 <= eta). sigma^2 is estimated from y's ring region, as in the paper. Here y
is real, so F(-f) = conj F(f): only one coefficient of each conjugate pair is counted, plus the
real DC term (real and imaginary parts of a pair each of variance sigma^2 / 2, DC of sigma^2),
which keeps the null distribution exact instead of doubling every coefficient.

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


def ring_pvalues(noise: torch.Tensor, key: bytes, radius: int | None = None) -> list[dict]:
    """The paper's test on recovered noise (n, C, H, W): per image {p_value, eta, dof, lambda}."""
    try:
        from scipy.stats import ncx2
    except ImportError:
        raise GenforgeError("Tree-Ring detection needs SciPy: pip install 'genforge[images]'") from None
    c, h, w = noise.shape[1:]
    radius = radius or default_radius(h, w)
    rings = ring_index(h, w, radius)
    fy, fx = _offsets(h, w)
    # one of each conjugate pair (upper half plane) plus DC, the only self-conjugate point inside
    half = (rings > 0) & ((fy > 0) | ((fy == 0) & (fx > 0)))
    dc = (fy == 0) & (fx == 0)
    k = key_pattern(key, (c, h, w), radius)
    out = []
    for y in _spectrum(noise.cpu()):  # (C, H, W) complex
        sigma2 = float((y[:, rings > 0].abs() ** 2).mean())
        if not sigma2 > 0:
            out.append({"p_value": 1.0, "eta": 0.0, "dof": 0, "lambda": 0.0})
            continue
        d = y - k  # real and imaginary parts N(0, sigma^2 / 2) off DC, N(0, sigma^2) at DC under H0
        eta = 2 * float((d[:, half].abs() ** 2).sum()) + float((d[:, dc].abs() ** 2).sum())
        lam = 2 * float((k[:, half].abs() ** 2).sum()) + float((k[:, dc].abs() ** 2).sum())
        dof = c * (2 * int(half.sum()) + 1)
        p = float(ncx2.cdf(eta / sigma2, dof, lam / sigma2))
        out.append({"p_value": p if math.isfinite(p) else 1.0, "eta": eta / sigma2, "dof": dof,
                    "lambda": lam / sigma2})
    return out


def detect(model, images: torch.Tensor, key: bytes, radius: int | None = None,
           steps: int = INVERSION_STEPS, batch_size: int = 64) -> list[dict]:
    """Tree-Ring test of images (n, C, H, W) in the run's pixel range against ``key``, with the
    diffusion run's ``model``: one dict per image (see :func:`ring_pvalues`)."""
    out: list[dict] = []
    for start in range(0, images.shape[0], batch_size):
        out += ring_pvalues(invert(model, images[start:start + batch_size], steps), key, radius)
    return out
