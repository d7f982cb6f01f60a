"""Image sampling and latent tools: sample grids, interpolation and attribute vectors.

Functions over any image model with ``sample(n, generator, labels)`` and, for the
latent tools, ``encode(x, y) -> (mean, logvar)`` / ``decode(z, y)`` (the VAE today).
Images are (N, C, H, W) tensors in the run's ``spec.pixel_range``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch

from genforge import GenforgeError
from genforge.data.images import save_grid, save_nearest_grid, to_range


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line between latents a, b (L,) at fractions t (S,): (S, L)."""
    return a[None] + t[:, None] * (b - a)[None]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985), recommended for Gaussian latents by White (2016):
    a straight line between two typical N(0, I) points passes near the origin, where the
    prior has little typical mass, so midpoints decode to washed-out images. (S, L)."""
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    so = torch.sin(omega)
    if so.abs() < 1e-6:  # (anti)parallel: the great circle is undefined, fall back to a line
        return lerp(a, b, t)
    return (torch.sin((1 - t) * omega) / so)[:, None] * a[None] + (torch.sin(t * omega) / so)[:, None] * b[None]


def _labels(y, n: int, device) -> torch.Tensor | None:
    if y is None:
        return None
    y = torch.as_tensor(y, device=device).long().reshape(-1)
    return y.expand(n) if y.numel() == 1 else y


@torch.no_grad()
def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8, method: str = "slerp",
                y_a=None, y_b=None) -> torch.Tensor:
    """Decode ``steps`` points on the path between the posterior means of images x_a and x_b
    ((C, H, W) each): (steps, C, H, W). The endpoints are the two reconstructions. A
    conditional model keeps y_a for the first half of the path and y_b for the second."""
    if steps < 2:
        raise GenforgeError("interpolation needs at least 2 steps")
    if method not in ("lerp", "slerp"):
        raise GenforgeError(f"unknown interpolation '{method}'; use lerp or slerp")
    device = model.steps_done.device if hasattr(model, "steps_done") else x_a.device
    ya, yb = _labels(y_a, 1, device), _labels(y_b, 1, device)
    za = model.encode(x_a[None].to(device), ya)[0][0]
    zb = model.encode(x_b[None].to(device), yb)[0][0]
    t = torch.linspace(0, 1, steps, device=device)
    z = (lerp if method == "lerp" else slerp)(za, zb, t)  # (steps, L)
    y = None
    if ya is not None:
        y = torch.where(t < 0.5, ya.expand(steps), (yb if yb is not None else ya).expand(steps))
    return model.decode(z, y)


@torch.no_grad()
def attribute_vector(model, images: torch.Tensor, labels: torch.Tensor, from_class: int,
                     to_class: int, batch_size: int = 500) -> torch.Tensor:
    """Mean posterior mean of class ``to_class`` minus that of ``from_class`` (White 2016): (L,)."""
    labels = torch.as_tensor(labels).long().to(images.device)
    means = {}
    for cls in (from_class, to_class):
        sel = images[labels == cls]
        if sel.shape[0] == 0:
            raise GenforgeError(f"no images of class {cls} to compute an attribute vector from")
        cond = getattr(model, "K", 0)
        zs = [model.encode(sel[s:s + batch_size],
                           torch.full((min(batch_size, sel.shape[0] - s),), cls, device=sel.device)
                           if cond else None)[0] for s in range(0, sel.shape[0], batch_size)]
        means[cls] = torch.cat(zs).mean(0)
    return means[to_class] - means[from_class]


@torch.no_grad()
def apply_attribute(model, images: torch.Tensor, vector: torch.Tensor,
                    scales: Sequence[float] = (0.0, 0.5, 1.0, 1.5), y=None) -> torch.Tensor:
    """Decode z(x) + s * vector for each image and scale: (N, len(scales), C, H, W)."""
    y = _labels(y, images.shape[0], vector.device)
    z = model.encode(images, y)[0]  # (N, L)
    rows = [model.decode(z + s * vector, y) for s in scales]
    return torch.stack(rows, 1)


# --------------------------------------------------------------------------- CLI


def _class_index(spec, value: str) -> int:
    """A class given by index or by name (case-insensitive)."""
    names = [n.lower() for n in spec.class_names]
    if value.lower() in names:
        return names.index(value.lower())
    try:
        k = int(value)
    except ValueError:
        k = -1
    if not 0 <= k < spec.num_classes:
        listing = ", ".join(f"{i}={n}" for i, n in enumerate(spec.class_names)) or "none: unlabelled data"
        raise GenforgeError(f"unknown class '{value}'; classes are {listing}")
    return k


def _load_image(spec, ref: str, data_cache: dict) -> tuple[torch.Tensor, int | None]:
    """An image named on the command line: a PNG/JPEG path, or 'test:INDEX' into the held-out split."""
    if ref.startswith(("test:", "val:")):
        data = _heldout(spec, data_cache)
        i = int(ref.split(":", 1)[1]) if ref.split(":", 1)[1].isdigit() else -1
        if not 0 <= i < len(data.val):
            raise GenforgeError(f"'{ref}': index out of range 0..{len(data.val) - 1}")
        batch = data.val.get(torch.tensor([i]))
        return batch["x"][0], (int(batch["y"][0]) if "y" in batch else None)
    from PIL import Image

    path = Path(ref)
    if not path.is_file():
        raise GenforgeError(f"'{ref}' is neither an image file nor test:INDEX")
    c, h, w = spec.shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = torch.tensor(list(im.getdata()), dtype=torch.uint8).reshape(h, w, c).permute(2, 0, 1)
    except OSError as e:
        raise GenforgeError(f"cannot read image {path} ({e})") from None
    return to_range(arr, spec.pixel_range), None


def _heldout(spec, cache: dict):
    if "data" not in cache:
        from genforge.config import DataConfig
        from genforge.data.images import load_images

        cfg = cache["run"].config.data
        try:
            cache["data"] = load_images(DataConfig(**{**cfg.model_dump(), "hflip": False}))
        except GenforgeError as e:
            raise GenforgeError(f"this option needs the run's dataset '{cfg.name}', which is not "
                                f"available: {e}") from None
    return cache["data"]


def sample_images_cli(run, args) -> Path:
    """`genforge sample RUN_DIR` for image runs; writes one PNG grid and prints its path."""
    model, spec = run.model, run.spec
    device = next(model.parameters()).device
    seed = args.seed if args.seed is not None else 0
    g = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    n = args.num_samples if args.num_samples is not None else 64
    if n < 1:
        raise GenforgeError("--num-samples must be at least 1")
    cache = {"run": run}
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    interp = getattr(args, "interpolate", None)
    attribute = getattr(args, "attribute", None)
    needs_latent = interp or attribute
    if needs_latent and not hasattr(model, "encode"):
        raise GenforgeError(f"family '{run.config.family}' has no encoder; --interpolate and "
                            "--attribute need a latent-variable model such as vae")
    labels = None
    if interp:
        (xa, ya), (xb, yb) = (_load_image(spec, r, cache) for r in interp)
        if getattr(model, "K", 0):
            cls = getattr(args, "class_label", None)
            fixed = _class_index(spec, cls) if cls is not None else None
            ya, yb = (fixed, fixed) if fixed is not None else (ya, yb)
            if ya is None or yb is None:
                raise GenforgeError("this model is conditional: give --class-label for image files")
        images = interpolate(model, xa, xb, args.steps, args.interp_method, ya, yb)
        name, nrow = f"interpolate-{args.interp_method}-{stamp}.png", args.steps
    elif attribute:
        data = _heldout(spec, cache)
        if "y" not in data.val.get(torch.tensor([0])):
            raise GenforgeError("--attribute needs a labelled dataset")
        a, b = (_class_index(spec, v) for v in attribute)
        all_x, all_y = data.val.get(torch.arange(len(data.val)))["x"].to(device), data.val.labels
        vec = attribute_vector(model, all_x, all_y, a, b)
        pick = torch.nonzero(all_y == a).flatten()[: min(n, 16)].to(device)
        if len(pick) == 0:
            raise GenforgeError(f"no held-out images of class {spec.class_names[a]}")
        scales = (0.0, 0.5, 1.0, 1.5, 2.0)
        out = apply_attribute(model, all_x[pick], vec, scales,
                              all_y.to(device)[pick] if getattr(model, "K", 0) else None)
        images = torch.cat([all_x[pick].cpu()[:, None], out.cpu()], 1).flatten(0, 1)
        labels = [s for _ in pick for s in ("input", *(f"+{s:g}v" for s in scales))]
        name, nrow = f"attribute-{a}-to-{b}-{stamp}.png", len(scales) + 1
    else:
        cls = getattr(args, "class_label", None)
        if cls is not None:
            if not getattr(model, "K", 0):
                raise GenforgeError("--class-label needs a conditional model (model.conditional=true)")
            y = torch.full((n,), _class_index(spec, cls), device=device)
        elif getattr(model, "K", 0):
            y = torch.arange(n, device=device) % model.K
        else:
            y = None
        images = model.sample(n, g, y, temperature=args.latent_temperature)
        labels = y.tolist() if y is not None else None
        name, nrow = f"sample-{stamp}.png", None
    out_path = Path(args.out) if getattr(args, "out", None) else run.run_dir / "samples" / name
    save_grid(images.cpu(), out_path, spec, labels, nrow)
    print(f"wrote {out_path}")
    if getattr(args, "nearest", False) and not needs_latent:
        data = _heldout(spec, cache)
        near = out_path.with_name(out_path.stem + "-nearest.png")
        save_nearest_grid(images[: min(n, 32)].cpu(), data.train, near, spec)
        print(f"wrote {near} (each sample beside its nearest training image)")
    return out_path

