"""Image datasets -> uint8 tensors in memory -> batches scaled to ``data.pixel_range``.

Sources (every dataset name, folder and ``.npz``) are read by data/image_sources.py.

Every file is found through :func:`genforge.data.locate.locate` ($GENFORGE_DATA,
system folders, then a checksummed download). Images stay uint8 ``(N, C, H, W)``
(60k Fashion-MNIST images are 47 MB) and are scaled per batch, so pixel range
and horizontal flips are options, never baked into the stored data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.atomic import atomic_write_text
from genforge.data.image_sources import RawImages, load_raw
from genforge.data.spec import DataSpec

SPLIT_SEED = 20140101  # fixed: the held-out splits never change between runs (recorded in data.json)


# --------------------------------------------------------------------------- batches


@dataclass
class ImageSplit:
    """One split: uint8 images (N, C, H, W) and optional labels, scaled per batch."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64
    pixel_range: tuple[float, float] = (0.0, 1.0)
    hflip: bool = False  # random horizontal flips (training split only)

    def __len__(self) -> int:
        return self.images.shape[0]

    def get(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'x': (B, C, H, W) float32 in pixel_range, 'y': (B,) int64 when labelled}."""
        x = self.images[indices]
        if self.hflip:
            # The global RNG: the trainer checkpoints it, so a resumed run flips identically.
            flip = torch.rand(x.shape[0]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        batch = {"x": to_range(x, self.pixel_range)}
        if self.labels is not None:
            batch["y"] = self.labels[indices]
        return batch


def to_range(x_uint8: torch.Tensor, pixel_range: Sequence[float]) -> torch.Tensor:
    lo, hi = pixel_range
    return x_uint8.float() * ((hi - lo) / 255.0) + lo


def to_unit(x: torch.Tensor, pixel_range: Sequence[float]) -> torch.Tensor:
    """Images in ``pixel_range`` -> [0, 1] (clamped): the canonical range of metrics and PNGs."""
    lo, hi = pixel_range
    return ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)


def to_signed(x: torch.Tensor, pixel_range: Sequence[float]) -> torch.Tensor:
    """Images in ``pixel_range`` -> [-1, 1] (clamped): what diffusion and GAN networks see."""
    return to_unit(x, pixel_range) * 2 - 1


def from_signed(x: torch.Tensor, pixel_range: Sequence[float]) -> torch.Tensor:
    """[-1, 1] (clamped) -> ``pixel_range``: the inverse of :func:`to_signed`."""
    lo, hi = pixel_range
    return (x.float().clamp(-1, 1) + 1) / 2 * (hi - lo) + lo


def fingerprint_of(images: np.ndarray | torch.Tensor) -> str:
    """sha256 prefix of uint8 images (N, C, H, W): identifies a split's exact content."""
    a = images.numpy() if torch.is_tensor(images) else images
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@dataclass
class ImageData:
    """Three disjoint splits. ``train`` fits the weights, ``val`` selects them (``checkpoints/best``,
    training-time evaluation) and ``test`` is only for ``genforge eval``: no model is chosen on it.

    ``test`` is the dataset's shipped test split where it has one (fashion-mnist, mnist, cifar10,
    an .npz with test images), else a seeded held-out fraction; ``val`` is always carved out of
    the training images (see :func:`split_indices`).
    """

    spec: DataSpec
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    fingerprint: str  # of the TEST images: eval checks the data did not change since training
    val_fingerprint: str = ""
    split_seed: int = SPLIT_SEED

    def save(self, run_dir: Path) -> None:
        """Record the split in ``run_dir/data.json`` (written atomically)."""
        info = {"name": self.spec.name, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "split_seed": self.split_seed,
                "val_fingerprint": self.val_fingerprint, "test_fingerprint": self.fingerprint}
        atomic_write_text(Path(run_dir) / "data.json", json.dumps(info, indent=2) + "\n")


def saved_test_fingerprint(run_dir: Path) -> str | None:
    """The test fingerprint recorded in ``run_dir/data.json``, or None when there is none.

    Runs written before the three-way split stored the held-out (= test) images' fingerprint
    as ``val_fingerprint`` and had no ``test`` count; those still compare correctly.
    """
    path = Path(run_dir) / "data.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenforgeError(f"cannot read {path} ({e}); the run directory is damaged") from None
    return info.get("test_fingerprint") if "test" in info else info.get("val_fingerprint")


def split_indices(n: int, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out): sorted index arrays, ``held_out`` a seeded ``fraction`` (at least 1) of ``range(n)``.

    The same (n, fraction, seed) always gives the same split, so a run's splits never move.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_out = max(1, round(n * fraction))
    return np.sort(order[n_out:]), np.sort(order[:n_out])


def _take(x: np.ndarray, y: np.ndarray | None, idx: np.ndarray):
    return x[idx], None if y is None else y[idx]


def _three_way(raw: RawImages, fraction: float, name: str):
    """(train, val, test) pairs of (images, labels). ``test`` is the shipped test split, else a
    held-out fraction of all images (the same held-out images earlier versions evaluated on);
    ``val`` is then a fraction of what remains, drawn with the next seed."""
    if not 0.0 < fraction < 1.0:
        raise GenforgeError(f"data.val_fraction must be in (0, 1) to hold out images (got {fraction})")
    x, y = raw.train, raw.train_labels
    if raw.test is None:
        rest, held = split_indices(len(x), fraction, SPLIT_SEED)
        test = _take(x, y, held)
        x, y = _take(x, y, rest)
    else:
        test = (raw.test, raw.test_labels)
    keep, held = split_indices(len(x), fraction, SPLIT_SEED + 1)
    if len(keep) < 1:
        raise GenforgeError(f"dataset '{name}' has {len(raw.train)} training images: too few to hold "
                            "out validation (and test) images; add images or lower data.val_fraction")
    return _take(x, y, keep), _take(x, y, held), test


def load_images(data_cfg) -> ImageData:
    lo, hi = data_cfg.pixel_range
    if not hi > lo:
        raise GenforgeError(f"data.pixel_range {data_cfg.pixel_range} must be (low, high) with high > low")
    raw = load_raw(data_cfg.name)
    train, val, test = _three_way(raw, data_cfg.val_fraction, data_cfg.name)
    labelled = all(lab is not None for _, lab in (train, val, test))
    n_classes = len(raw.class_names) if labelled else 0
    if labelled:
        labels = np.concatenate([train[1], val[1], test[1]])
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= n_classes:
            raise GenforgeError(f"dataset '{data_cfg.name}' has label {int(labels.max(initial=0))} but "
                                f"{n_classes} class names; labels must be 0..K-1 with one name per class")

    def split(pair, flip):
        x, y = pair
        return ImageSplit(torch.from_numpy(np.array(x, dtype=np.uint8, copy=True)),
                          torch.from_numpy(np.array(y, dtype=np.int64)) if labelled else None,
                          (lo, hi), flip)

    spec = DataSpec(modality="image", shape=tuple(int(s) for s in raw.train.shape[1:]),
                    num_classes=n_classes, class_names=list(raw.class_names) if labelled else [],
                    pixel_range=(float(lo), float(hi)), name=data_cfg.name)
    return ImageData(spec, split(train, data_cfg.hflip), split(val, False), split(test, False),
                     fingerprint=fingerprint_of(test[0]), val_fingerprint=fingerprint_of(val[0]))
