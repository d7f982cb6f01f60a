"""Image watermarks for `genforge sample` and `genforge detect`: which mark applies where.

- Tree-Ring (``treering.py``): diffusion runs sampled from pure noise by a deterministic sampler
  (ddim at eta 0, euler, heun, dpmpp-2m); detection needs the run (its model inverts the image).
  Not with --init/--mask (no initial noise) or ddpm/ddim eta > 0/heun-churn/dpmpp-2m-sde (fresh noise
  each step).
- Post-hoc (``posthoc.py``): every image family, as many images as can hold it at PSNR >= 30 dB
  (8x8 digits mostly cannot; 28x28 can); a 1-bit zero-payload detection mark, found with the key
  alone. For comparison, invisible-watermark's DWT-DCT-SVD holds 32 bits from about 48x48 px.

Both go into the uint8 pixels before PNG encoding, so a lossless file keeps them exactly. A PNG
grid of `genforge sample` is split into its cells when the run is given (``--run``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.watermark import posthoc, treering

P_THRESHOLD = posthoc.normal_sf(posthoc.Z_THRESHOLD)  # 3.2e-5: z > 4, the text detector's bar
GRID_PAD, GRID_CAPTION, GRID_MIN_CELL = 2, 12, 32  # data/grids.make_grid's layout


class ImageMarker:
    """The marks of one `genforge sample` call on an image run: the Tree-Ring noise hook handed to
    the family through ``ImageRefs`` and the post-hoc mark applied to each uint8 batch."""

    def __init__(self, key: bytes | None, strength: float | None = None, fingerprint: str = ""):
        self.key, self.strength, self.fingerprint = key, strength, fingerprint
        self.treering = False
        self.counts = {"marked": 0, "unmarked": 0}
        self.psnr: list[float] = []
        self.shape: tuple[int, ...] = ()

    @classmethod
    def for_run(cls, run, off: bool = False, strength: float | None = None) -> ImageMarker:
        if off:
            if strength is not None:
                raise GenforgeError("--watermark-strength sets the mark that --no-watermark turns off; give one")
            return cls(None)
        from genforge.watermark.keys import key_fingerprint, run_key

        key = run_key(run.run_dir)
        return cls(key, strength, key_fingerprint(key))

    def noise_mark(self, shape: tuple[int, int, int]):
        """For a diffusion family's plan_sampling: unit noise (n, C, H, W) -> Tree-Ring-marked."""
        if self.key is None:
            return None
        treering.ring_index(shape[1], shape[2], treering.default_radius(shape[1], shape[2]))  # fits?
        self.treering = True
        key = self.key
        return lambda noise: treering.mark_noise(noise, key)

    def posthoc(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (n, C, H, W) -> marked where they can hold it (see posthoc.embed)."""
        if self.key is None:
            return images
        out, report = posthoc.embed(images, self.key, self.strength)
        self.shape = tuple(images.shape[1:])
        self.counts["marked"] += report["marked"]
        self.counts["unmarked"] += report["unmarked"]
        if report["psnr_db"] is not None:
            self.psnr.append(report["psnr_db"])
        return out

    def record(self) -> dict:
        """For the file's provenance: which marks, how many images, the key's fingerprint (never the key)."""
        if self.key is None:
            return {"watermarked": False}
        return {"watermarked": True, "key_fingerprint": self.fingerprint, "tree_ring": self.treering,
                "posthoc": dict(self.counts, psnr_db=round(sum(self.psnr) / len(self.psnr), 2) if self.psnr else None)}

    def message(self) -> str:
        """One stderr line: what was marked, with what, and how to turn it off."""
        if self.key is None:
            return "not watermarked (--no-watermark)"
        m, u = self.counts["marked"], self.counts["unmarked"]
        size = "x".join(map(str, self.shape[1:])) if self.shape else "these"
        marks = ["Tree-Ring in the initial noise"] if self.treering else []
        if m:
            psnr = sum(self.psnr) / len(self.psnr)
            marks.append(f"post-hoc mark on {m} of {m + u} images (PSNR {psnr:.1f} dB)")
        line = f"watermarked: {' + '.join(marks)}" if marks else "not watermarked"
        if u:
            line += (f"; {u} {size} images cannot hold the post-hoc mark at PSNR >= {posthoc.MIN_PSNR:g} dB "
                     "and were left without it")
        return f"{line} (key fingerprint {self.fingerprint}, --no-watermark to turn off)"

    def announce(self) -> None:
        print(self.message(), file=sys.stderr)


# -- detection --------------------------------------------------------------------------------
def read_image(path: Path, channels: int) -> np.ndarray:
    """A PNG/JPEG file -> (H, W, channels) uint8."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise GenforgeError(f"cannot read image {path} ({e})") from None
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def split_grid(arr: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """(H, W, C) uint8: one image of ``shape`` (C, h, w), or a `genforge sample` grid of them
    (cells upscaled to >= 32 px, 2 px gaps, optional 12 px captions) -> (n, C, h, w) float gray
    levels (each upscaled block averaged). Blank (all-white) filler cells are dropped."""
    c, h, w = shape
    big_h, big_w = arr.shape[:2]
    if (big_h, big_w) == (h, w):
        return torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    scale = max(1, math.ceil(GRID_MIN_CELL / max(h, w)))
    ch, cw = h * scale, w * scale
    for caption in (0, GRID_CAPTION):
        if (big_w - GRID_PAD) % (cw + GRID_PAD) == 0 and (big_h - GRID_PAD) % (ch + GRID_PAD + caption) == 0:
            ncol, nrows = (big_w - GRID_PAD) // (cw + GRID_PAD), (big_h - GRID_PAD) // (ch + GRID_PAD + caption)
            break
    else:
        raise GenforgeError(f"a {big_w}x{big_h} image is neither one {w}x{h} image of this run nor a "
                            "`genforge sample` grid of them (was it resized or cropped?)")
    cells = []
    for r in range(nrows):
        for k in range(ncol):
            y0, x0 = GRID_PAD + r * (ch + GRID_PAD + caption), GRID_PAD + k * (cw + GRID_PAD)
            block = arr[y0:y0 + ch, x0:x0 + cw].astype(np.float64)
            if block.min() == 255:
                continue  # a grid's unused cell
            cells.append(block.reshape(h, scale, w, scale, c).mean((1, 3)))
    if not cells:
        raise GenforgeError("the grid has no image cells (all blank)")
    return torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2).float()


def detect_images(images: torch.Tensor, key: bytes, model=None,
                  inversion_steps: int = treering.INVERSION_STEPS) -> dict:
    """Test images (n, C, H, W), float gray levels 0..255, for the key's marks: post-hoc always,
    Tree-Ring when ``model`` is a diffusion model. A verdict over all n (one file, one answer):
    post-hoc by one z over the summed residuals (``posthoc.combined_z``), Tree-Ring by the cosine
    of the mean inverted ring with the key (``treering.combined_pvalue``); both nulls hold however
    the images depend on each other. With two tests the smaller p is Bonferroni-doubled.
    ``watermarked``: p < 3.2e-5 (z > 4)."""
    from genforge.families.diffusion import Diffusion

    n = images.shape[0]
    ph = posthoc.detect(images, key)
    z_ph = posthoc.combined_z(images, key)
    methods = {"posthoc": {"z": z_ph, "p_value": posthoc.normal_sf(z_ph),
                           "per_image_z": [round(d["z"], 3) for d in ph]}}
    if isinstance(model, Diffusion):
        from genforge.data.images import to_range

        tr, together = treering.detect_all(model, to_range(images, model.spec.pixel_range), key,
                                           steps=inversion_steps)
        methods["tree_ring"] = {"p_value": together["p_value"], "cos": round(together["cos"], 4),
                                "per_image_p": [float(f"{d['p_value']:.3g}") for d in tr],
                                "radius": treering.default_radius(*images.shape[-2:]),
                                "inversion_steps": inversion_steps}
    best = min(methods, key=lambda m: methods[m]["p_value"])
    p = min(1.0, methods[best]["p_value"] * len(methods))
    return {"watermarked": p < P_THRESHOLD, "z": _z_of(p), "p_value": p, "method": best,
            "images": n, "threshold_p": P_THRESHOLD, "methods": methods}


def verdict(result: dict) -> dict:
    """A ``detect_images`` result as the row `genforge detect` and POST /v1/detect report:
    watermarked, z, p_value, tokens (None: no tokens are scored for an image) and method, as
    plain JSON types."""
    z = result.get("z", result.get("statistic"))
    return {"watermarked": bool(result["watermarked"]), "z": None if z is None else float(z),
            "p_value": float(result["p_value"]), "tokens": None, "method": str(result.get("method", "image"))}


def _z_of(p: float) -> float:
    """The one-sided z with upper tail p (reported beside a p-value that did not come from a z)."""
    from scipy.stats import norm

    return float(norm.isf(max(p, 1e-300)))


def detect_image_file(path, key: bytes, run_dir=None, inversion_steps: int = treering.INVERSION_STEPS) -> dict:
    """`genforge detect` on a .png/.jpg: {watermarked, z, p_value, method, images, methods, ...}.

    With ``run_dir`` the file is read as that run's image or sample grid, and a diffusion run's
    model also tests for Tree-Ring; without it, the whole file is one image and only the post-hoc
    mark (which needs the key alone) is tested."""
    path = Path(path)
    if not path.is_file():
        raise GenforgeError(f"{path} does not exist")
    if run_dir is None:
        from PIL import Image

        try:
            with Image.open(path) as im:
                channels = 1 if im.mode in ("L", "1", "I", "I;16", "LA") else 3
        except OSError as e:
            raise GenforgeError(f"cannot read image {path} ({e})") from None
        arr = read_image(path, channels)
        images = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
        return {**detect_images(images, key), "file": str(path)}
    from genforge.runs import load_run

    run = load_run(run_dir)
    if run.spec.modality != "image":
        raise GenforgeError(f"{run_dir} is a {run.spec.modality} run; image files need an image run")
    images = split_grid(read_image(path, run.spec.shape[0]), tuple(run.spec.shape))
    return {**detect_images(images, key, run.model, inversion_steps), "file": str(path)}
