"""What an image goes through after it leaves genforge: the robustness list of issue #18 as pure
functions over uint8 images (n, C, H, W) -> uint8 images of the same shape.

Strengths follow Wen et al. 2023 (Tree-Ring, sec. 4.1, "Robustness") where they fit tiny images:
JPEG quality 90/75/50, a crop keeping 75% of the area scaled back up, Gaussian noise (the paper's
sigma 0.1 of the range is 25 gray levels; we use 0.05, 13 levels, since an 8x8 digit has no
texture to hide in), resizing to half and back, and SDEdit re-noising to strength 0.3 then
denoising with a diffusion model (a regeneration attack, Zhao et al. 2023).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch

NOISE_STD = 0.05 * 255  # gray levels


def _pil(img: torch.Tensor):
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, "L" if arr.shape[-1] == 1 else "RGB")


def _tensor(im, c: int) -> torch.Tensor:
    arr = np.array(im.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], c)).permute(2, 0, 1).contiguous()


def _each(images: torch.Tensor, fn) -> torch.Tensor:
    c = images.shape[1]
    return torch.stack([_tensor(fn(_pil(x)), c) for x in images.cpu()])


def png(images: torch.Tensor) -> torch.Tensor:
    """A PNG round trip (lossless: the mark must survive it exactly)."""
    def roundtrip(im):
        from PIL import Image

        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return Image.open(io.BytesIO(buf.getvalue()))
    return _each(images, roundtrip)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """A JPEG round trip at ``quality`` (Pillow's encoder)."""
    def roundtrip(im):
        from PIL import Image

        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))
    return _each(images, roundtrip)


def resize(images: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """Down to ``factor`` of each side and back up (bilinear both ways)."""
    from PIL import Image

    h, w = images.shape[-2:]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    return _each(images, lambda im: im.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR))


def crop(images: torch.Tensor, area: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random crop keeping ``area`` of the image, scaled back to full size (bilinear)."""
    from PIL import Image

    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * area ** 0.5)), max(1, round(w * area ** 0.5))
    out = []
    for x in images.cpu():
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        im = _pil(x).crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)
        out.append(_tensor(im, x.shape[0]))
    return torch.stack(out)


def gaussian_noise(images: torch.Tensor, std: float = NOISE_STD,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Add N(0, std^2) noise in gray levels, round and clip."""
    noise = torch.randn(images.shape, generator=generator) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def sdedit(images: torch.Tensor, model, strength: float = 0.3, generator: torch.Generator | None = None,
           **sample_options) -> torch.Tensor:
    """Re-noise each image to ``strength`` and denoise it with diffusion ``model`` (SDEdit,
    Meng et al. 2022): a regeneration attack. One call per image (``init`` is one image)."""
    from genforge.data.images import to_range, to_unit

    spec = model.spec
    out = []
    for x in images:
        init = to_range(x, spec.pixel_range)
        y = model.sample(1, generator, init=init, strength=strength, **sample_options)
        out.append((to_unit(y.cpu(), spec.pixel_range) * 255).round().to(torch.uint8)[0])
    return torch.stack(out)


def attacks(diffusion_model=None, seed: int = 0, **sdedit_options) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The issue's list by name; SDEdit only when a diffusion model is given."""
    def gen():
        return torch.Generator().manual_seed(seed)

    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "none": lambda x: x,
        "png": png,
        "jpeg90": lambda x: jpeg(x, 90),
        "jpeg75": lambda x: jpeg(x, 75),
        "jpeg50": lambda x: jpeg(x, 50),
        "resize0.5": resize,
        "noise0.05": lambda x: gaussian_noise(x, generator=gen()),
        "crop0.75": lambda x: crop(x, generator=gen()),
    }
    if diffusion_model is not None:
        out["sdedit0.3"] = lambda x: sdedit(x, diffusion_model, 0.3, gen(), **sdedit_options)
    return out
