"""A keyed post-hoc mark for images of any family: spread spectrum (Cox et al. 1997, "Secure
spread spectrum watermarking for multimedia") in the pixel domain, detected by a normalized
correlation with a p-value.

Why hand-written: no maintained library marks 8x8 or 28x28 images with a calibrated p-value;
invisible-watermark's DWT-DCT-SVD needs about 48x48 px for its 32 bits (a 28x28 image holds
about 9), and returns bits, not a test. This mark is a 1-bit, zero-payload *detection* mark: it
answers "was this marked with this key?", nothing more.

Mark: x' = round(x + a P), clipped to [0, 255], where P (C, H, W) is a key-derived +-1 pattern
and a the strength in gray levels (PSNR = 20 log10(255 / a) before clipping). Detection: the
residual r = x - (3x3 local mean of x) removes most image content; then

    z = <r, P> / ||r||.

Under H0 (the image was not made with this key), P is a fair +-1 sequence independent of r, so
<r, P> has mean 0 and variance sum r_i^2 *exactly*, whatever the image: z is standardised by the
key's randomness, not by a model of images, and is about N(0, 1) by the central limit theorem
(p = the normal upper tail). A marked image adds a h(P) to r, and <h(P), P> = (8/9) N for N = C H W
values (the 3x3 mean keeps 1/9 of each +-1), so

    E z ~= a (8/9) sqrt(N) / sqrt(s^2 + (8/9) a^2),     s = the residual std of the unmarked image.

Capacity: detection needs E z >= TARGET_Z (threshold z > 4, as the text detector, plus 1.28 for
90% power under a unit perturbation of z). At the largest strength allowed (MAX_STRENGTH, PSNR
30 dB) that needs N >= TARGET_Z^2 (s^2 + (8/9) a^2) / ((8/9)^2 a^2) values: with s = 30 gray
levels (sharp digits), about 400 (20x20 px, gray); with s = 15, about 130. An 8x8 image (64) holds
the mark only where its content is nearly flat; 28x28 (784) holds it with room. :func:`embed`
checks each image after rounding and clipping (informed embedding) and never writes a weak mark.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genforge import GenforgeError

PURPOSE = "image/posthoc/v1"  # the HMAC sub-key's purpose (watermark.keys.derive)
Z_THRESHOLD = 4.0  # one-sided, p < 3.2e-5: the same bar as the text detector
Z_POWER = 1.2816  # the normal 90% quantile: margin for 90% detection
TARGET_Z = Z_THRESHOLD + Z_POWER
MIN_PSNR = 30.0  # dB: the weakest image quality a default mark may cost
MAX_STRENGTH = 255.0 / 10 ** (MIN_PSNR / 20)  # 8.06 gray levels
MIN_STRENGTH = 0.01  # gray levels a requested mark may have
GAIN = 8.0 / 9.0  # the share of a +-1 pattern the 3x3 residual keeps


def pattern(key: bytes, shape: tuple[int, int, int]) -> torch.Tensor:
    """The key's +-1 pattern (C, H, W), float32, from an HMAC sub-key of the run key."""
    from genforge.watermark.keys import derive

    g = torch.Generator().manual_seed(int.from_bytes(derive(key, PURPOSE)[:8], "little"))
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def residual(x: torch.Tensor) -> torch.Tensor:
    """x (n, C, H, W) minus its 3x3 local mean (reflected at the borders): the high-pass part."""
    x = x.float()
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return x - F.avg_pool2d(padded, 3, stride=1)


def zscores(images: torch.Tensor, key: bytes) -> torch.Tensor:
    """z of each image (n, C, H, W), gray levels 0..255 (uint8 or float); 0 for a flat image."""
    r = residual(images)
    p = pattern(key, tuple(images.shape[1:]))
    num = (r * p).flatten(1).sum(1)
    den = r.flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def expected_z(strength: float, values: int, residual_std: float) -> float:
    """E z of an image with ``values`` = C H W entries whose residual std is ``residual_std``
    (gray levels) marked at ``strength`` (ignores clipping; :func:`embed` measures it)."""
    if strength <= 0:
        return 0.0
    return strength * GAIN * math.sqrt(values) / math.sqrt(residual_std ** 2 + GAIN * strength ** 2)


def min_values(strength: float, residual_std: float, target: float = TARGET_Z) -> int:
    """The fewest C H W entries that hold the mark at ``strength`` with E z >= ``target``."""
    if strength <= 0:
        raise GenforgeError(f"watermark strength must be > 0 gray levels, got {strength}")
    return math.ceil(target ** 2 * (residual_std ** 2 + GAIN * strength ** 2) / (GAIN * strength) ** 2)


def psnr(strength: float) -> float:
    """PSNR (dB) of a +-strength mark before clipping: 20 log10(255 / strength)."""
    return 20 * math.log10(255.0 / strength)


def _apply(x: torch.Tensor, p: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    return (x.float() + strength.view(-1, 1, 1, 1) * p).round().clamp(0, 255).to(torch.uint8)


def embed(images: torch.Tensor, key: bytes, strength: float | None = None) -> tuple[torch.Tensor, dict]:
    """Mark uint8 images (n, C, H, W) -> (images, report).

    ``strength`` None (the default): each image gets the least strength (at most MAX_STRENGTH,
    PSNR >= 30 dB) that gives z >= TARGET_Z after rounding and clipping; an image that cannot reach
    it is left unmarked and counted in ``report["unmarked"]`` (never a weak mark). A given
    ``strength`` is a request: if any image falls short, a GenforgeError says what would hold it.
    report: {marked, unmarked, strength (mean of the marked), psnr_db (mean of the marked), min_z}.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise GenforgeError("the post-hoc mark takes uint8 images (N, C, H, W)")
    n, values = images.shape[0], images[0].numel()
    p = pattern(key, tuple(images.shape[1:]))
    if strength is not None:
        if not (math.isfinite(strength) and MIN_STRENGTH <= strength <= 64):  # 1e-300 squared is 0: a division by it
            raise GenforgeError(f"--watermark-strength must be in [{MIN_STRENGTH:g}, 64] gray levels (a weaker mark "
                                f"is lost in 8-bit rounding), got {strength}")
        out = _apply(images, p, torch.full((n,), float(strength)))
        z = zscores(out, key)
        weak = z < TARGET_Z
        if weak.any():
            s = float(residual(images[weak]).flatten(1).std(1).median())
            raise GenforgeError(
                f"{int(weak.sum())} of {n} {'x'.join(map(str, images.shape[1:]))} images cannot hold the mark "
                f"at strength {strength:g} (PSNR {psnr(strength):.1f} dB): z {float(z[weak].min()):.1f} < "
                f"{TARGET_Z:.2f} needed for 90% detection at z > {Z_THRESHOLD:g}; at this strength an image "
                f"with their texture needs {min_values(strength, s)} values (has {values}); raise "
                "--watermark-strength, sample larger images, or pass --no-watermark")
        return out, _report(out, images, z, torch.full((n,), float(strength)), ~weak)
    # informed embedding: start from the closed form, then correct for rounding and clipping
    s = residual(images).flatten(1).std(1)
    need = TARGET_Z * s / (GAIN * math.sqrt(values))
    room = 1 - TARGET_Z ** 2 / (GAIN * values)  # the mark's own share of ||r|| (from solving E z = target)
    a = (need / math.sqrt(room) if room > 0 else need * 4).clamp(1.0, MAX_STRENGTH)
    for _ in range(6):
        z = zscores(_apply(images, p, a), key)
        short = z < TARGET_Z
        if not short.any():
            break
        grown = (a * (TARGET_Z / z.clamp(min=0.5)) * 1.05).clamp(max=MAX_STRENGTH)
        a = torch.where(short, grown, a)
    out = _apply(images, p, a)
    z = zscores(out, key)
    ok = z >= TARGET_Z
    out = torch.where(ok.view(-1, 1, 1, 1), out, images)  # an image that cannot hold it stays as drawn
    return out, _report(out, images, z, a, ok)


def _report(out, images, z, a, ok) -> dict:
    marked = int(ok.sum())
    mse = ((out.float() - images.float()) ** 2).flatten(1).mean(1)[ok]
    return {"marked": marked, "unmarked": int((~ok).sum()),
            "strength": float(a[ok].mean()) if marked else 0.0,
            "psnr_db": float((10 * torch.log10(255.0 ** 2 / mse.clamp(min=1e-12))).mean()) if marked else None,
            "min_z": float(z[ok].min()) if marked else None}


def normal_sf(z: float) -> float:
    """The standard normal upper tail P(Z > z)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def combined_z(images: torch.Tensor, key: bytes) -> float:
    """One z for a set of images (n, C, H, W) marked with the same pattern: <sum r_i, P> / ||sum r_i||.

    Not Stouffer's sum of the n z's: for one fixed key the images' z's are not independent (what
    digits share, their mean residual, correlates with P the same way in every image; on 40 unmarked
    digits Stouffer reached z = 5). Summing the residuals first keeps the statistic standardised by
    the key's randomness alone, exactly as for one image, while the marks add up n-fold."""
    r = residual(images).sum(0)
    den = float(r.norm())
    return float((r * pattern(key, tuple(images.shape[1:]))).sum()) / den if den > 0 else 0.0


def detect(images: torch.Tensor, key: bytes) -> list[dict]:
    """Per image (n, C, H, W), gray levels: {z, p_value}. Flat images score z = 0, p = 0.5."""
    return [{"z": float(z), "p_value": normal_sf(float(z))} for z in zscores(images, key)]
