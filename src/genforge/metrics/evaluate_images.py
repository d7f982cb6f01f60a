"""`genforge eval` for image runs: sample, embed with the dataset's fixed extractor, compare.

Returns one flat dict of floats (also written to RUN_DIR/eval.json by the caller):

- ``fd``, ``kid``/``kid_se``, ``precision``/``recall``, ``density``/``coverage``: samples
  vs held-out (test) images in the extractor's feature space,
- ``class_entropy_norm`` (+ per-class fractions) and, for conditional models,
  ``label_agreement``: what the domain classifier says the samples are,
- ``memorization_*``: nearest-train over nearest-test distance ratios,
- reference floors measured in the same call on the same number of images:
  ``floor_fd_train_test`` (real vs real: the best a model can hope for at this sample
  size) and ``floor_fd_noise`` (uniform noise: what "nothing learned" scores),
- whatever the family reports on held-out data (VAE: IWAE NLL, ELBO, active units).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genforge import GenforgeError
from genforge.data.images import to_unit
from genforge.metrics.classes import class_histogram, histogram_entropy, label_agreement
from genforge.metrics.extractor import load_extractor
from genforge.metrics.frechet import frechet_distance, kernel_distance
from genforge.metrics.manifold import density_coverage, memorization, precision_recall


def _load_heldout(run):
    from genforge.config import DataConfig
    from genforge.data.images import load_images

    cfg = run.config.data
    data = load_images(DataConfig(**{**cfg.model_dump(), "hflip": False}))
    saved = run.run_dir / "data.json"
    if saved.is_file():
        want = json.loads(saved.read_text()).get("val_fingerprint")
        if want and want != data.fingerprint:
            raise GenforgeError(f"dataset '{cfg.name}' changed since this run was trained (its held-out "
                                "images differ); evaluate on the original data")
    if tuple(data.spec.shape) != tuple(run.spec.shape):
        raise GenforgeError(f"dataset '{cfg.name}' now has images {data.spec.shape}, the run was "
                            f"trained on {run.spec.shape}")
    return data


@torch.no_grad()
def evaluate_images(run, max_batches: int | None = None, num_samples: int = 10000, batch_size: int = 250,
                    iwae_k: int = 100, nll_images: int = 1000, seed: int = 0, progress: bool = True,
                    inception_weights: str | None = None) -> dict[str, float]:
    """Feature-space metrics of ``run``'s samples against its dataset's held-out split.

    ``num_samples`` generated images are compared with as many test images (all of
    them when fewer); ``max_batches`` caps that at ``max_batches * batch_size``.
    The likelihood bound uses the first ``nll_images`` test images with ``iwae_k``
    importance samples (IWAE on a CPU costs k decoder passes per image).
    """
    model, spec = run.model, run.spec
    if inception_weights and not Path(inception_weights).is_file():  # fail before minutes of work
        raise GenforgeError(f"Inception weights '{inception_weights}' not found; pass the path of "
                            "torch-fidelity's pt_inception-2015-12-05 .pth file")
    device = next(model.parameters()).device
    data = _load_heldout(run)
    extractor = load_extractor(spec.name)
    shape = extractor.meta.get("input_shape")
    if list(spec.shape) != (json.loads(shape) if isinstance(shape, str) else list(shape or [])):
        raise GenforgeError(f"the feature extractor for '{spec.name}' takes images "
                            f"{extractor.meta.get('input_shape')}, the run's are {list(spec.shape)}")
    n = min(num_samples, len(data.val))
    if max_batches:
        n = min(n, max_batches * batch_size)
    if n < 10:
        raise GenforgeError(f"need at least 10 held-out images for feature metrics, have {n}")
    g = torch.Generator(device=device).manual_seed(seed)
    cpu_g = torch.Generator().manual_seed(seed)
    test = data.val.get(torch.arange(n))
    # Same-size reference from the training split: FD is biased by sample size, so the floor
    # and the memorization ratio are only meaningful against equally many images.
    train_idx = torch.randperm(len(data.train), generator=cpu_g)[:n]
    train_x = data.train.get(train_idx)["x"]
    conditional = bool(getattr(model, "K", 0))
    requested = torch.arange(n) % spec.num_classes if conditional else None

    samples = []
    for s in tqdm(range(0, n, batch_size), desc="sample", disable=not progress, unit="batch"):
        m = min(batch_size, n - s)
        y = requested[s:s + m].to(device) if conditional else None
        samples.append(model.sample(m, g, y).float().cpu())
    fake = torch.cat(samples)  # (n, C, H, W) in pixel_range

    def embed(x):
        return extractor.run(to_unit(x, spec.pixel_range))

    f_fake, p_fake = embed(fake)
    f_test, p_test = embed(test["x"])
    f_train, _ = embed(train_x)
    noise = torch.rand(fake.shape, generator=cpu_g)  # uniform [0, 1] pixels
    f_noise, _ = extractor.run(noise)

    out: dict[str, float] = {"step": float(run.step), "samples": float(n)}
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
        if "y" in test:
            out["extractor_test_accuracy"] = label_agreement(p_test, test["y"])
        if conditional:
            out["label_agreement"] = label_agreement(p_fake, requested)
    if hasattr(model, "heldout_metrics") and nll_images > 0:
        m = min(nll_images, n)
        bs = max(1, min(batch_size, 100))
        batches = ({k: v[s:s + bs].to(device) for k, v in test.items()} for s in range(0, m, bs))
        out.update(model.heldout_metrics(batches, g, k=iwae_k))
        out["nll_images"] = float(m)
    if inception_weights:
        from genforge.metrics.inception import inception_fid

        out["inception_fid"] = inception_fid(to_unit(test["x"], spec.pixel_range),
                                             to_unit(fake, spec.pixel_range), inception_weights)
    out["extractor_version"] = float(extractor.meta.get("version", 0))
    return out
