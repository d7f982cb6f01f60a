"""Image metrics: `genforge eval` for image runs and `genforge metrics images` for any samples.

Both go through one function, :func:`image_report`: samples in [0, 1] plus the reference
dataset (its TEST split, never the validation split a run was selected on) and its fixed
extractor -> one flat dict:

- ``fd``, ``kid``/``kid_se``, ``precision``/``recall``, ``density``/``coverage``: samples
  vs test images in the extractor's feature space,
- ``class_entropy_norm`` (+ per-class fractions) and, for conditional models,
  ``label_agreement``: what the domain classifier says the samples are,
- ``memorization_*``: nearest-train over nearest-test distance ratios,
- reference floors measured in the same call on the same number of images:
  ``floor_fd_train_test`` (real vs real: the best a model can hope for at this sample
  size) and ``floor_fd_noise`` (uniform noise: what "nothing learned" scores).

:func:`evaluate_images` draws the samples from a run and adds what the family reports on
test data (VAE: IWAE NLL, ELBO, active units); :func:`score_images` takes samples made
anywhere (:func:`load_samples` reads an .npz or a folder of PNGs). Counts are ints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from genforge import GenforgeError
from genforge.data.images import to_unit
from genforge.metrics.classes import class_histogram, histogram_entropy, label_agreement
from genforge.metrics.extractor import Extractor, load_extractor
from genforge.metrics.frechet import frechet_distance, kernel_distance
from genforge.metrics.manifold import density_coverage, memorization, precision_recall

MIN_IMAGES = 10
DEFAULT_SAMPLES = 10000
# Keys whose values are counts: reported as ints even when a family hands them over as floats.
COUNT_KEYS = frozenset({"step", "samples", "nll_images", "iwae_k", "active_units", "latent_dim",
                        "extractor_version", "tokens"})


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _as_counts(out: dict) -> dict:
    """Counts as ints (``iwae_k: 100``, not ``100.0``)."""
    for k in COUNT_KEYS & out.keys():
        v = out[k]
        if isinstance(v, float) and v.is_integer():
            out[k] = int(v)
    return out


def _check_extractor(extractor: Extractor, shape, name: str) -> None:
    want = extractor.meta.get("input_shape")
    want = list(json.loads(want)) if isinstance(want, str) else list(want or [])
    if [int(s) for s in shape] != [int(s) for s in want]:
        raise GenforgeError(f"the feature extractor for '{name}' takes images {_shape(want)} (C x H x W), "
                            f"the dataset's are {_shape(shape)}; refit it with "
                            f"`genforge metrics fit-extractor {name}`")


@torch.no_grad()
def image_report(fake: torch.Tensor, data, extractor: Extractor, requested: torch.Tensor | None = None,
                 seed: int = 0, inception_weights: str | None = None) -> dict:
    """Every feature-space metric of ``fake`` (n, C, H, W) in [0, 1] against the first n
    images of ``data.test``, with floors from n training images and n uniform-noise images.

    ``requested``: the class each sample was asked to be (conditional models), for
    ``label_agreement``. The training subset and the noise are drawn from ``seed``.
    """
    n = fake.shape[0]
    spec = data.spec
    if tuple(fake.shape[1:]) != tuple(spec.shape):
        raise GenforgeError(f"samples are {_shape(fake.shape[1:])} (C x H x W) but '{spec.name}' images "
                            f"are {_shape(spec.shape)}; generate or resize them to the dataset's size")
    if n < MIN_IMAGES or n > len(data.test):
        raise GenforgeError(f"feature metrics need {MIN_IMAGES} to {len(data.test)} images (the test "
                            f"split of '{spec.name}'), got {n}")
    cpu_g = torch.Generator().manual_seed(seed)
    test_x = data.test.images[:n].float() / 255.0
    # Same-size reference from the training split: FD is biased by sample size, so the floor
    # and the memorization ratio are only meaningful against equally many images.
    train_idx = torch.randperm(len(data.train), generator=cpu_g)[:n]
    train_x = data.train.images[train_idx].float() / 255.0
    noise = torch.rand(fake.shape, generator=cpu_g)  # uniform [0, 1] pixels

    f_fake, p_fake = extractor.run(fake.float())
    f_test, p_test = extractor.run(test_x)
    f_train, _ = extractor.run(train_x)
    f_noise, _ = extractor.run(noise)

    out: dict = {"samples": n}
    out["fd"] = frechet_distance(f_test, f_fake)
    # Subsets of at most half the set, so that they differ and the standard error means something.
    subset = min(1000, n // 2)
    out["kid"], out["kid_se"] = kernel_distance(f_test, f_fake, subset_size=subset, seed=seed)
    out["precision"], out["recall"] = precision_recall(f_test, f_fake, k=3)
    out["density"], out["coverage"] = density_coverage(f_test, f_fake, k=5)
    out.update(memorization(f_fake, f_train, f_test))
    out["floor_fd_train_test"] = frechet_distance(f_test, f_train)
    out["floor_kid_train_test"], _ = kernel_distance(f_test, f_train, subset_size=subset, seed=seed)
    out["floor_fd_noise"] = frechet_distance(f_test, f_noise)
    if spec.num_classes:
        hist = class_histogram(p_fake)
        out["class_entropy"], out["class_entropy_norm"] = histogram_entropy(hist)
        _, out["test_class_entropy_norm"] = histogram_entropy(class_histogram(p_test))
        for name, frac in zip(spec.class_names, hist.tolist(), strict=False):
            out[f"class_frac/{name}"] = frac
        if data.test.labels is not None:
            out["extractor_test_accuracy"] = label_agreement(p_test, data.test.labels[:n])
        if requested is not None:
            out["label_agreement"] = label_agreement(p_fake, requested)
    if inception_weights:
        from genforge.metrics.inception import inception_fid

        out["inception_fid"] = inception_fid(test_x, fake.float(), inception_weights)
    out["extractor_version"] = int(extractor.meta.get("version", 0))
    return out


def _shortfall(requested: int | None, scored: int, data, otherwise: str) -> dict:
    """When a given --num-samples could not be met: the request and a one-line note (printed
    with the report and kept in eval.json), never a silent smaller number."""
    if requested is None or scored >= requested:
        return {}
    why = (f"the test split of '{data.spec.name}' has {len(data.test)} images"
           if scored == len(data.test) else otherwise)
    return {"samples_requested": int(requested), "note": f"scored {scored} of {requested} requested: {why}"}


# --------------------------------------------------------------------------- a run's samples


def _load_heldout(run):
    from genforge.config import DataConfig
    from genforge.data.images import load_images, saved_test_fingerprint

    cfg = run.config.data
    data = load_images(DataConfig(**{**cfg.model_dump(), "hflip": False}))
    want = saved_test_fingerprint(run.run_dir)
    if want and want != data.fingerprint:
        raise GenforgeError(f"dataset '{cfg.name}' changed since this run was trained (its test "
                            "images differ); evaluate on the original data")
    if tuple(data.spec.shape) != tuple(run.spec.shape):
        raise GenforgeError(f"dataset '{cfg.name}' now has images {_shape(data.spec.shape)}, the run was "
                            f"trained on {_shape(run.spec.shape)}")
    return data


def _check_inception(inception_weights: str | None) -> None:
    if inception_weights and not Path(inception_weights).is_file():  # fail before minutes of work
        raise GenforgeError(f"Inception weights '{inception_weights}' not found; pass the path of "
                            "torch-fidelity's pt_inception-2015-12-05 .pth file")


@torch.no_grad()
def evaluate_images(run, max_batches: int | None = None, num_samples: int | None = None, batch_size: int = 250,
                    nll_images: int = 1000, seed: int = 0, progress: bool = True,
                    inception_weights: str | None = None, also=None, **family_options) -> dict:
    """Feature-space metrics of ``run``'s samples against its dataset's test split.

    ``num_samples`` (default 10000) generated images are compared with as many test images (all
    of them when fewer: a request the test split cannot meet is scored on all of it and says so
    in ``note``); ``max_batches`` caps that at ``max_batches * batch_size``.
    The family's held-out numbers (a VAE's likelihood bound) use the first ``nll_images``
    test images. ``family_options`` are the family's declared eval options: those it also
    declares for sampling (a diffusion sampler and step count) go to ``model.sample``, the
    rest (a VAE's ``iwae_k``) to ``model.heldout_metrics``.

    ``also`` (samples (n, C, H, W) in [0, 1], data) -> more numbers about the same samples (a
    piano-roll run's music metrics, modalities/roll_music.py). With it, all ``num_samples`` are
    drawn and given to ``also``, the feature metrics take the first ones the test split can
    match, and a missing extractor skips them with a ``note`` instead of failing.
    """
    model, spec = run.model, run.spec
    sampling = {o.name for o in type(model).sample_options}
    sample_kw = {k: v for k, v in family_options.items() if k in sampling}
    heldout_kw = {k: v for k, v in family_options.items() if k not in sampling}
    _check_inception(inception_weights)
    device = next(model.parameters()).device
    data = _load_heldout(run)
    scored = min(num_samples or DEFAULT_SAMPLES, len(data.test))  # images in the feature metrics
    n = scored if also is None else (num_samples or scored)  # images drawn
    if max_batches:
        n, scored = min(n, max_batches * batch_size), min(scored, max_batches * batch_size)
    skipped = None
    try:
        extractor = load_extractor(data)
        _check_extractor(extractor, data.spec.shape, spec.name)
        if scored < MIN_IMAGES:
            raise GenforgeError(f"need at least {MIN_IMAGES} test images for feature metrics, have {scored}")
    except GenforgeError as e:
        if also is None:
            raise
        extractor, skipped = None, f"feature metrics skipped: {e}"
    g = torch.Generator(device=device).manual_seed(seed)
    k = model.conditioning_classes
    requested = torch.arange(n) % k if k else None

    samples = []
    for s in tqdm(range(0, n, batch_size), desc="sample", disable=not progress, unit="batch"):
        m = min(batch_size, n - s)
        y = requested[s:s + m].to(device) if k else None
        samples.append(model.sample(m, g, labels=y, **sample_kw).float().cpu())
    fake = to_unit(torch.cat(samples), spec.pixel_range)  # (n, C, H, W) in [0, 1]

    out: dict = {"step": int(run.step)}
    if extractor is not None:
        out.update(image_report(fake[:scored], data, extractor, None if requested is None else requested[:scored],
                                seed=seed, inception_weights=inception_weights))
        out.update(_shortfall(num_samples if also is None else n, scored, data,
                              f"--max-batches {max_batches} x --batch-size {batch_size}"))
    if skipped:
        out["note"] = skipped
    if nll_images > 0:
        m = min(nll_images, n, len(data.test))
        bs = max(1, min(batch_size, 100))
        batches = ({k: v.to(device) for k, v in data.test.get(torch.arange(s, min(s + bs, m))).items()}
                   for s in range(0, m, bs))
        heldout = model.heldout_metrics(batches, g, **heldout_kw)
        if heldout:
            out.update(heldout)
            out["nll_images"] = m
    if also is not None:
        out.update(also(fake, data))
    return _as_counts(out)


# --------------------------------------------------------------------------- samples from anywhere


def load_reference(against: str):
    """The dataset samples are scored against (a registered name, a folder or an .npz), in [0, 1]."""
    from genforge.config import DataConfig
    from genforge.data.images import load_images

    return load_images(DataConfig(name=against, pixel_range=(0.0, 1.0)))


def _layout(a: np.ndarray, where: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) -> (N, C, H, W); ``shape`` (C, H, W) decides
    between the two 4-d layouts when both could be meant."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim != 4:
        raise GenforgeError(f"{where} has shape {a.shape}; expected images (N,H,W), (N,C,H,W) or (N,H,W,C)")
    nchw, nhwc = a.shape[1] in (1, 3), a.shape[3] in (1, 3)
    if nchw and nhwc and shape is not None:
        return a if tuple(a.shape[1:]) == tuple(shape) else a.transpose(0, 3, 1, 2)
    if nchw:
        return a
    if nhwc:
        return a.transpose(0, 3, 1, 2)
    raise GenforgeError(f"{where} has shape {a.shape}; expected 1 or 3 channels, as (N,C,H,W) or (N,H,W,C)")


def _unit(a: np.ndarray, where: str) -> torch.Tensor:
    """uint8 0..255 (or other integers in that range) and floats in [0, 1] -> float32 [0, 1]."""
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise GenforgeError(f"{where} holds integers {a.min()}..{a.max()}, outside 0..255")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise GenforgeError(f"{where} has dtype {a.dtype}; store uint8 0..255 or floats in [0, 1]")
    if a.size and not np.isfinite(a).all():
        raise GenforgeError(f"{where} holds {int((~np.isfinite(a)).sum())} NaN or infinite values")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise GenforgeError(f"{where} holds floats {a.min():g}..{a.max():g}, outside [0, 1]; "
                            "store uint8 0..255 or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def load_samples(path: str | Path, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Images made anywhere -> float32 (N, C, H, W) in [0, 1].

    ``path``: a folder of PNG/JPEG images (all one size), or an .npz with the images under
    ``images``, ``x`` or as its only array: uint8 0..255 or floats in [0, 1], as (N, H, W),
    (N, C, H, W) or (N, H, W, C). ``shape`` (C, H, W), when known, settles an ambiguous layout.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        from genforge.data.image_sources import load_image_folder

        return torch.from_numpy(load_image_folder(path).train).float() / 255.0
    if not path.is_file():
        raise GenforgeError(f"samples '{path}' not found; give an .npz file or a folder of PNG images")
    if path.suffix.lower() != ".npz":
        raise GenforgeError(f"samples '{path}' is not an .npz file or a folder of PNG images")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            key = next((k for k in ("images", "x") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise GenforgeError(f"{path} holds arrays {keys or 'none'}; put the samples under "
                                    "'images' (or save only one array)")
            a = z[key]
    except GenforgeError:
        raise
    except ValueError:  # an object (pickled) array: refused, it could run code
        raise GenforgeError(f"{path}: the samples are an object array; save one numeric array, "
                            "e.g. np.stack(images).astype(np.uint8)") from None
    except Exception as e:  # a truncated or foreign file: zipfile/OSError/EOFError
        raise GenforgeError(f"cannot read {path} as an .npz file ({e})") from None
    where = f"{path}: '{key}'"
    return _unit(_layout(a, where, shape), where)


@torch.no_grad()
def score_images(samples: torch.Tensor, against, num_samples: int | None = None, seed: int = 0,
                 inception_weights: str | None = None) -> dict:
    """The same report as ``genforge eval`` for images made anywhere.

    ``samples``: (N, C, H, W) in [0, 1]; ``against``: a registered image dataset, folder or
    .npz (or its loaded :class:`~genforge.data.images.ImageData`), whose test split is the
    reference. ``min(N, num_samples, test images)`` samples
    are compared (a seeded random subset when there are more); the floors use as many.
    """
    _check_inception(inception_weights)
    if not torch.is_tensor(samples) or samples.ndim != 4:
        raise GenforgeError(f"samples must be a tensor (N, C, H, W), got shape "
                            f"{tuple(getattr(samples, 'shape', ()))}")
    if samples.shape[0] < MIN_IMAGES:  # before any loading; an empty tensor has no min() either
        raise GenforgeError(f"feature metrics need at least {MIN_IMAGES} sample images, got "
                            f"{samples.shape[0]}")
    data = load_reference(against) if isinstance(against, str) else against
    against = data.spec.name
    if tuple(samples.shape[1:]) != tuple(data.spec.shape):
        raise GenforgeError(f"samples are {_shape(samples.shape[1:])} (C x H x W) but '{against}' images "
                            f"are {_shape(data.spec.shape)}; generate or resize them to the dataset's size")
    samples = samples.float()
    if not bool(torch.isfinite(samples).all()) or samples.min() < 0 or samples.max() > 1:
        raise GenforgeError("samples must be finite and in [0, 1]")
    if num_samples is not None and num_samples < 1:
        raise GenforgeError(f"--num-samples must be at least 1, got {num_samples}")
    extractor = load_extractor(data)
    _check_extractor(extractor, data.spec.shape, against)
    n = min(len(samples), len(data.test), num_samples or len(samples))
    if n < len(samples):
        pick = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:n]
        samples = samples[pick.sort().values]
    out = image_report(samples, data, extractor, seed=seed, inception_weights=inception_weights)
    return _as_counts({**out, **_shortfall(num_samples, n, data, f"the samples hold {n} images")})
