"""Image grids for previews and `genforge sample`: (N, C, H, W) tensors -> labelled PNG files,
and each sample beside its nearest training image (a memorization check by eye)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.data.images import ImageSplit, to_range, to_unit
from genforge.data.spec import DataSpec

# The most images one PNG grid holds: 400 cells of >= 32 px is a ~14-megapixel image already;
# more go to an .npz. Every grid (previews, samples, latent paths, nearest pairs) goes through
# make_grid, so the limit holds everywhere (an --interp-points 100000 path was 3.4M px tall).
MAX_GRID = 400
TOO_MANY = "write them as an .npz (--out FILE.npz) or ask for fewer"


def _cells(images: torch.Tensor, spec: DataSpec, min_cell: int) -> tuple[np.ndarray, int]:
    """(N, C, H, W) in spec.pixel_range -> (N, h, w, 3) uint8, upscaled (nearest) to >= min_cell px."""
    if images.dim() != 4:
        raise GenforgeError(f"a grid needs images shaped (N, C, H, W), got {tuple(images.shape)}")
    x = to_unit(images.detach().cpu(), spec.pixel_range)
    scale = max(1, math.ceil(min_cell / max(x.shape[-2:])))
    x = x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8), scale


def check_grid_size(n: int, too_many: str = TOO_MANY) -> None:
    """Refuse more than MAX_GRID images in one grid; ``too_many`` tells the user what to change
    (callers name their flag, e.g. "lower --interp-points")."""
    if n > MAX_GRID:
        raise GenforgeError(f"{n} images do not fit one PNG grid (at most {MAX_GRID}); {too_many}")


def make_grid(images: torch.Tensor, spec: DataSpec, labels: Sequence | None = None,
              nrow: int | None = None, min_cell: int = 32, pad: int = 2, too_many: str = TOO_MANY):
    """A PIL image of ``images`` (N, C, H, W) in rows of ``nrow``; each cell captioned by ``labels``.

    A label is a class index (named through ``spec.class_names``) or any string.
    """
    from PIL import Image, ImageDraw, ImageFont

    check_grid_size(images.shape[0] if images.dim() == 4 else 0, too_many)
    cells, _ = _cells(images, spec, min_cell)
    n, h, w, _ = cells.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    caption = 12 if labels is not None else 0
    grid = Image.new("RGB", (nrow * (w + pad) + pad, rows * (h + pad + caption) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, nrow)
        x0, y0 = pad + c * (w + pad), pad + r * (h + pad + caption)
        grid.paste(Image.fromarray(cells[i]), (x0, y0))
        if labels is not None:
            lab = labels[i]
            if isinstance(lab, (int, np.integer)) or (torch.is_tensor(lab) and lab.dim() == 0):
                k = int(lab)
                lab = spec.class_names[k] if 0 <= k < len(spec.class_names) else str(k)
            text = str(lab)[: max(1, w // 6)]  # the default bitmap font is ~6 px per character
            draw.text((x0, y0 + h), text, fill=(0, 0, 0), font=font)
    return grid


def save_grid(images: torch.Tensor, path: str | Path, spec: DataSpec, labels: Sequence | None = None,
              nrow: int | None = None, too_many: str = TOO_MANY, stamp=None) -> Path:
    """Write ``images`` (N, C, H, W), in ``spec.pixel_range``, as one PNG grid (optionally captioned),
    atomically; ``stamp`` (a :class:`genforge.provenance.Stamp`) adds provenance and a signature."""
    from genforge.provenance import write_png

    return write_png(make_grid(images, spec, labels, nrow, too_many=too_many), path, stamp)


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor,
                       chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``queries`` (N, D), the index and Euclidean distance of its nearest row in
    ``reference`` (M, D), computed in chunks of the reference so memory stays O(N * chunk)."""
    best_d = torch.full((queries.shape[0],), math.inf)
    best_i = torch.zeros(queries.shape[0], dtype=torch.long)
    q = queries.float()
    for start in range(0, reference.shape[0], chunk):
        d = torch.cdist(q, reference[start:start + chunk].float())  # (N, chunk)
        v, i = d.min(1)
        better = v < best_d
        best_d, best_i = torch.where(better, v, best_d), torch.where(better, i + start, best_i)
    return best_i, best_d


def save_nearest_grid(samples: torch.Tensor, train: ImageSplit, path: str | Path, spec: DataSpec,
                      stamp=None) -> Path:
    """Each sample (left) beside its nearest training image in pixel space (right), one pair a row
    pair: the visual check for memorization that the memorization metric quantifies."""
    ref = to_unit(to_range(train.images, (0.0, 1.0)), (0.0, 1.0)).flatten(1)  # (M, C*H*W) in [0, 1]
    idx, dist = nearest_neighbours(to_unit(samples.cpu(), spec.pixel_range).flatten(1), ref)
    near = to_range(train.images[idx], spec.pixel_range)
    pairs = torch.stack([samples.cpu().float(), near], 1).flatten(0, 1)  # (2N, C, H, W), interleaved
    captions = [s for d in dist.tolist() for s in ("sample", f"d={d:.1f}")]
    return save_grid(pairs, path, spec, captions, nrow=2 * min(4, samples.shape[0]), stamp=stamp)
