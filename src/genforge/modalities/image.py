"""Images: datasets of (C, H, W) pictures; samples are tensors, written as PNG grids or .npz;
eval is feature-space quality, diversity and memorization (``genforge.metrics``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from genforge import GenforgeError
from genforge.data.grids import MAX_GRID, check_grid_size  # one limit for every grid
from genforge.families.base import LatentVariableModel, SampleOption
from genforge.modalities import EVAL_NUM_SAMPLES, FILTER, PRIVACY_FILTER, Modality, step_progress
from genforge.modalities.roll_music import TEMPO
from genforge.outputs import check_out, unique_output
from genforge.provenance import SIGN_KEYS, SIGN_OPTIONS, sample_stamp
from genforge.watermark import NO_WATERMARK

LATENT_TOOLS = ("interpolate", "interp_points", "interp_method", "attribute")


class ImageModality(Modality):
    name = "image"
    unit = "examples"
    data_fields = frozenset({"pixel_range", "hflip"})
    sample_options = (
        SampleOption("class_label", "conditional models: sample this class (index or name)",
                     str, metavar="CLASS"),
        SampleOption("nearest", "also write each sample beside its nearest training image", flag=True),
        *SIGN_OPTIONS,
        FILTER,
        PRIVACY_FILTER,
        NO_WATERMARK,
        SampleOption("watermark_strength", "post-hoc watermark amplitude in gray levels (default: per image, "
                                         "the least that detects at z > 4 with 90%% power, at most 8 = PSNR "
                                         "30 dB; an image that cannot hold a given strength is an error)",
                     float, metavar="LEVELS"),
    )
    eval_options = (
        EVAL_NUM_SAMPLES,
        SampleOption("inception_weights", "also compute standard Inception FID from this weights "
                                          "file (needs genforge[inception])", str, metavar="PATH"),
    )

    def run_options(self, run, kind: str) -> tuple[SampleOption, ...]:
        """A piano-roll run (jsb-roll) writing music also takes the music runs' --tempo."""
        from genforge.data.music_roll import ROLL_DATASETS

        return (TEMPO,) if kind == "sample" and run.spec.name in ROLL_DATASETS else ()

    def load(self, data_cfg, needs: dict[str, Any]):
        from genforge.data.images import load_images

        return load_images(data_cfg)

    def count(self, batch) -> int:
        return batch["x"].shape[0]

    def write_preview(self, sample: torch.Tensor, path_stem: Path, data) -> Path:
        from genforge.data.grids import save_grid

        return save_grid(sample, path_stem.with_suffix(".png"), data.spec)

    def evaluate(self, run, **options: Any) -> dict[str, Any]:
        from genforge.metrics.evaluate_images import evaluate_images
        from genforge.modalities.roll_music import roll_music_metrics

        # a piano-roll run (jsb-roll) also scores its samples decoded as music
        return evaluate_images(run, also=roll_music_metrics(run), **{k: v for k, v in options.items() if v is not None})

    # -- sample ------------------------------------------------------------------------
    def sample_command(self, run, generator, *, num_samples, out, batch_size, seed, class_label=None,
                       nearest=False, filter=None, privacy_filter=None, no_watermark=False,
                       watermark_strength=None, tempo=None, **family_options) -> None:
        from genforge.modalities.roll_music import sample_roll_music, writes_music
        from genforge.watermark.image import ImageMarker

        if writes_music(run, out):  # a piano-roll run (jsb-roll) asked for .mid/.wav/.png/.musicxml
            sample_roll_music(run, generator, ImageRefs(run), lambda n: class_labels(run.model, run.spec, class_label, n),
                              num_samples=num_samples, out=out, batch_size=batch_size, seed=seed,
                              class_label=class_label, nearest=nearest, filter=filter, privacy_filter=privacy_filter,
                              no_watermark=no_watermark, watermark_strength=watermark_strength, tempo=tempo,
                              **family_options)
            return
        if tempo is not None:  # roll runs only (run_options); None when not typed
            raise GenforgeError("--tempo sets the tempo of the music a piano-roll run writes with --out "
                                "FILE.mid/.wav/.png/.musicxml; this call writes images")
        model, spec = run.model, run.spec
        signing = {k: family_options.pop(k, None) for k in SIGN_KEYS}
        # every file this call writes carries where it came from (PNG chunk / .npz sidecar)
        prov = sample_stamp(run, generator, dict(num_samples=num_samples, out=out, batch_size=batch_size,
                                                  seed=seed, class_label=class_label, nearest=nearest,
                                                  **family_options, **signing),
                             png=out is None or Path(out).suffix.lower() == ".png")
        latent_model = isinstance(model, LatentVariableModel)
        tools = {k: family_options.pop(k) for k in LATENT_TOOLS if k in family_options and latent_model}
        if out is not None and Path(out).suffix.lower() not in (".png", ".npz"):
            raise GenforgeError(f"--out {out}: images are written as a .png grid or an .npz array")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        check_grid_size(tools.get("interp_points") or 0, "lower --interp-points (a path is one PNG row)")
        if tools.get("interpolate") or tools.get("attribute"):
            if nearest or filter or privacy_filter is not None:
                raise GenforgeError("--nearest, --filter and --privacy-filter apply to samples, not to "
                                    "--interpolate/--attribute paths")
            if tools.get("interpolate") and tools.get("attribute"):
                raise GenforgeError("give either --interpolate or --attribute, not both")
            images, labels, name, nrow = _latent_tool(run, class_label, num_samples, **tools)
            path = Path(out) if out else unique_output(run.run_dir / "samples", f"{name}-{stamp}", ".png")
            _save_png(images, path, spec, labels, nrow, prov)
            return
        # the family resolves its own options (a GAN's seed path, diffusion's --init/--trajectory)
        marker = ImageMarker.for_run(run, no_watermark, watermark_strength)  # the run's key, made at first use
        plan = model.plan_sampling(family_options, num_samples, ImageRefs(run, marker.noise_mark))
        family_options = plan.options
        n = plan.count or (64 if num_samples is None else num_samples)
        if plan.one_row:  # a path: one call, one PNG row
            batch_size = n
        if prov.signer is not None and out is None and n > MAX_GRID:
            raise GenforgeError(f"--sign signs PNG grids; {n} images go to an .npz (at most {MAX_GRID} "
                                "fit one grid): ask for fewer or drop --sign")
        if out is not None and Path(out).suffix.lower() == ".png" and n > MAX_GRID:
            raise GenforgeError(f"{n} images do not fit one PNG grid (at most {MAX_GRID}); "
                                "write them with --out FILE.npz")
        if out is not None and nearest:  # derived files follow --out's rule: never replace one
            check_out(Path(out).with_name(Path(out).stem + "-nearest.png"), "--out's companion file")
        from genforge.audit.privacy import sample_filters

        screens = sample_filters(run, filter, privacy_filter)  # loaded before sampling: fails fast
        prompts = family_options.get("prompt")
        if prompts and class_label is not None:
            raise GenforgeError("give either --prompt or --class-label, not both")
        y = None if prompts else class_labels(model, spec, class_label, n)
        chunks: list[torch.Tensor] = []
        starts = range(0, n, batch_size)
        for s in tqdm(starts, desc="sample", unit="batch", disable=len(starts) < 2):
            batch_y = None if y is None else y[s : s + batch_size]
            with step_progress(plan, f"batch {s // batch_size + 1}/{len(starts)}") as per_step:
                x = model.sample(min(batch_size, n - s), generator, labels=batch_y, **family_options, **per_step)
            # uint8 on the CPU (100k 28x28 images are 78 MB); marked before PNG encoding
            chunks.append(marker.posthoc(to_uint8(x.cpu(), spec)))
        images = torch.cat(chunks)
        marker.announce()
        prov.record["watermark"] = marker.record()
        kept = list(range(n))  # which drawn samples are written (all, unless a filter blocks some)
        if screens:  # before anything is written; blocked images are counted on stderr and in provenance
            from genforge.filters import screen, summary

            kept, blocked = screen(images.float() / 255.0, screens, "images")
            prov.record["screening"] = summary(screens, n, blocked)
            if blocked:
                images = images[kept]
                y = None if y is None else y[torch.as_tensor(kept, device=y.device)]
                n = len(kept)
                if plan.extras():
                    raise GenforgeError("companion grids (e.g. --trajectory) show every drawn sample, blocked "
                                        "ones too; nothing was written: drop them or the filters")
        if out is None:
            # a new name even when another `sample` ran in the same second (O_EXCL, -2, -3, ...)
            out = unique_output(run.run_dir / "samples", f"sample-{stamp}", ".png" if n <= MAX_GRID else ".npz")
        path = Path(out)
        extras = {path.with_name(f"{path.stem}-{suffix}.png"): grid for suffix, grid in plan.extras().items()}
        for extra_path in extras:  # e.g. FILE-trajectory.png: checked before anything is written
            check_out(extra_path, "--out's companion file")
        for extra_path, (extra, extra_nrow) in extras.items():
            _save_png(extra, extra_path, spec, None, extra_nrow, prov)
        if path.suffix.lower() == ".npz":
            _save_npz(path, images, y, spec)
            prov.sidecar(path)
        else:
            captions = [prompts[i % len(prompts)] for i in kept] if prompts else None
            nrow = None
            if plan.one_row:
                nrow = n  # a latent path reads as one row
            elif y is not None and class_label is None:
                nrow = model.conditioning_classes  # labels cycle through the classes: one class per column
            _save_png(from_uint8(images, spec), path, spec, captions or (None if y is None else y.tolist()), nrow,
                      prov)
        if nearest:
            from genforge.data.grids import save_nearest_grid

            near = path.with_name(path.stem + "-nearest.png")
            save_nearest_grid(from_uint8(images[:32], spec), _heldout(run).train, near, spec, prov)
            print(f"wrote {near} (each sample beside its nearest training image)")


IMAGE = ImageModality()


def class_labels(model, spec, class_label: str | None, n: int) -> torch.Tensor | None:
    """(n,) labels for a conditional model: the named class, else cycling through all classes."""
    device = next(model.parameters()).device
    if class_label is not None:
        if not model.conditioning_classes:
            how = f"train one with {model.class_conditioning}" if model.class_conditioning else \
                f"the {type(model).__name__} family has no class conditioning"
            raise GenforgeError(f"--class-label needs a class-conditional model; this run is unconditional ({how})")
        return torch.full((n,), class_index(spec, class_label), device=device)
    if model.conditioning_classes:
        return torch.arange(n, device=device) % model.conditioning_classes
    return None


def class_index(spec, value: str) -> int:
    """A class given by index or by name (case-insensitive)."""
    names = [n.lower() for n in spec.class_names]
    if value.lower() in names:
        return names.index(value.lower())
    k = int(value) if value.lstrip("-").isdigit() else -1
    if not 0 <= k < spec.num_classes:
        listing = ", ".join(f"{i}={n}" for i, n in enumerate(spec.class_names)) or "none: unlabelled data"
        raise GenforgeError(f"unknown class '{value}'; classes are {listing}")
    return k


def to_uint8(x: torch.Tensor, spec) -> torch.Tensor:
    """Samples in the run's pixel range -> (N, C, H, W) uint8, as PNGs store them."""
    from genforge.data.images import to_unit

    return (to_unit(x, spec.pixel_range) * 255).round().to(torch.uint8)


def from_uint8(x: torch.Tensor, spec) -> torch.Tensor:
    """uint8 images -> the run's pixel range (what grids and models take)."""
    from genforge.data.images import to_range

    return to_range(x, spec.pixel_range)


def _save_png(images: torch.Tensor, path: Path, spec, labels, nrow, stamp=None) -> None:
    from genforge.data.grids import save_grid

    save_grid(images.cpu(), path, spec, labels, nrow, stamp=stamp)
    print(f"wrote {path}")


def _save_npz(path: Path, images: torch.Tensor, labels: torch.Tensor | None, spec) -> None:
    """uint8 (N, C, H, W) under ``images`` (+ ``labels``), written atomically."""
    from genforge.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images.numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    print(f"wrote {images.shape[0]} images to {path} (uint8, N x C x H x W)")


def _heldout(run):
    """The run's dataset (without augmentation), for test:INDEX references and --nearest."""
    from genforge.config import DataConfig
    from genforge.data.images import load_images

    cfg = run.config.data
    try:
        return load_images(DataConfig(**{**cfg.model_dump(), "hflip": False}))
    except GenforgeError as e:
        raise GenforgeError(f"this option needs the run's dataset '{cfg.name}', which is not "
                            f"available: {e}") from None


def _load_image(run, ref: str, cache: dict) -> tuple[torch.Tensor, int | None]:
    """An image named on the command line: a PNG/JPEG path, or test:INDEX / val:INDEX."""
    split_name, _, index = ref.partition(":")
    if split_name in ("test", "val") and index:
        if "data" not in cache:
            cache["data"] = _heldout(run)
        data = cache["data"]
        split = data.test if split_name == "test" else data.val
        i = int(index) if index.isdigit() else -1
        if not 0 <= i < len(split):
            raise GenforgeError(f"'{ref}': index out of range 0..{len(split) - 1}")
        batch = split.get(torch.tensor([i]))
        return batch["x"][0], (int(batch["y"][0]) if "y" in batch else None)
    from PIL import Image

    path = Path(ref)
    if not path.is_file():
        raise GenforgeError(f"'{ref}' is neither an image file nor test:INDEX / val:INDEX")
    c, h, w = run.spec.shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            # np.array copies: PIL's buffer is read-only and torch warns about wrapping it
            arr = torch.from_numpy(np.array(im, dtype=np.uint8).reshape(h, w, c)).permute(2, 0, 1)
    except OSError as e:
        raise GenforgeError(f"cannot read image {path} ({e})") from None
    return from_uint8(arr, run.spec), None


MASK_SHAPES = ("left", "right", "top", "bottom", "center")


class ImageRefs:
    """What a family's ``plan_sampling`` may turn into tensors: an image named on the command
    line (a PNG/JPEG file, test:INDEX or val:INDEX) -> (C, H, W) in pixel range, and an
    inpainting mask -> (1, H, W) in {0, 1}."""

    def __init__(self, run, noise_mark=None):
        self.run, self.cache = run, {}
        self._noise_mark = noise_mark  # ImageMarker.noise_mark, or None: no watermark

    def image(self, ref: str) -> torch.Tensor:
        return _load_image(self.run, ref, self.cache)[0]

    def mask(self, ref: str) -> torch.Tensor:
        return load_mask(ref, self.run.spec.shape)

    def noise_mark(self, shape: tuple[int, int, int]):
        """A watermark for a diffusion family's initial noise (Tree-Ring): unit noise (n, C, H, W)
        -> marked; None when this call is not watermarked."""
        return None if self._noise_mark is None else self._noise_mark(shape)


def load_mask(ref: str, shape) -> torch.Tensor:
    """An inpainting mask (1, H, W) in {0, 1}, 1 = regenerate: a named half or centre square,
    or an image file whose bright pixels (> 50% grey) mark the region."""
    _, h, w = shape
    mask = torch.zeros(1, h, w)
    if ref in MASK_SHAPES:
        if ref == "left":
            mask[..., : w // 2] = 1
        elif ref == "right":
            mask[..., w // 2:] = 1
        elif ref == "top":
            mask[:, : h // 2] = 1
        elif ref == "bottom":
            mask[:, h // 2:] = 1
        else:
            mask[:, h // 4: h - h // 4, w // 4: w - w // 4] = 1
        return mask
    from PIL import Image

    path = Path(ref)
    if not path.is_file():
        raise GenforgeError(f"--mask {ref}: not an image file nor one of {', '.join(MASK_SHAPES)}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L").resize((w, h), Image.NEAREST), dtype=np.float32)
    except OSError as e:
        raise GenforgeError(f"cannot read mask {path} ({e})") from None
    mask = torch.from_numpy(arr > 127.5).float()[None]
    if mask.sum() == 0:
        raise GenforgeError(f"--mask {path} has no white pixels: nothing to inpaint")
    return mask


def _latent_tool(run, class_label, num_samples, interpolate=None, interp_points=8, interp_method="slerp",
                 attribute=None):
    """--interpolate / --attribute: (images, labels, file name, images per row)."""
    from genforge.sampling.images import apply_attribute, attribute_vector
    from genforge.sampling.images import interpolate as interpolate_path

    model, spec = run.model, run.spec
    if not isinstance(model, LatentVariableModel):
        raise GenforgeError(f"family '{run.config.family}' has no encoder; --interpolate and "
                            "--attribute need a latent-variable model such as vae")
    device = next(model.parameters()).device
    cache: dict = {}
    if interpolate:
        (xa, ya), (xb, yb) = (_load_image(run, r, cache) for r in interpolate)
        if model.conditioning_classes:
            fixed = class_index(spec, class_label) if class_label is not None else None
            ya, yb = (fixed, fixed) if fixed is not None else (ya, yb)
            if ya is None or yb is None:
                raise GenforgeError("this model is conditional: give --class-label for image files")
        images = interpolate_path(model, xa, xb, interp_points, interp_method, ya, yb)
        return images, None, f"interpolate-{interp_method}", interp_points
    data = _heldout(run)
    if data.test.labels is None:
        raise GenforgeError("--attribute needs a labelled dataset")
    a, b = (class_index(spec, v) for v in attribute)
    all_x, all_y = data.test.get(torch.arange(len(data.test)))["x"].to(device), data.test.labels
    vec = attribute_vector(model, all_x, all_y, a, b)
    pick = torch.nonzero(all_y == a).flatten()[: min(num_samples or 16, 16)].to(device)
    if len(pick) == 0:
        raise GenforgeError(f"no test images of class {spec.class_names[a]}")
    scales = (0.0, 0.5, 1.0, 1.5, 2.0)
    cond = all_y.to(device)[pick] if model.conditioning_classes else None
    out = apply_attribute(model, all_x[pick], vec, scales, cond)
    images = torch.cat([all_x[pick].cpu()[:, None], out.cpu()], 1).flatten(0, 1)
    labels = [s for _ in pick for s in ("input", *(f"+{s:g}v" for s in scales))]
    return images, labels, f"attribute-{a}-to-{b}", len(scales) + 1
