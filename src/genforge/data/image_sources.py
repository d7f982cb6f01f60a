"""Image sources: every image dataset genforge reads, as uint8 arrays (N, C, H, W) + labels.

Sources (``IMAGE_DATASETS``, a plain dict name -> (description, loader)):

- ``fashion-mnist`` and ``mnist``: the IDX files (Xiao et al. 2017; LeCun et al. 1998),
- ``cifar10``: the python-pickle archive (Krizhevsky 2009), read with an unpickler
  that only rebuilds numpy arrays,
- ``digits``: scikit-learn's 8x8 UCI digits, inside its wheel: the offline default,
- any folder of PNG/JPEG images (class labels from first-level subfolder names),
- an ``.npz`` file of arrays (see :func:`_load_npz` for the keys it reads).

Every file is found through :func:`genforge.data.locate.locate` ($GENFORGE_DATA,
system folders, then a checksummed download). Splitting and scaling live in data/images.py.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from genforge import GenforgeError
from genforge.data.locate import locate

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


@dataclass
class RawImages:
    """What a loader returns: uint8 images (N, C, H, W), int64 labels (N,) or None."""

    train: np.ndarray
    train_labels: np.ndarray | None
    test: np.ndarray | None = None  # None: a held-out fraction of `train` is split off
    test_labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- readers


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array; shape from its header.

    Layout (LeCun et al.): 2 zero bytes, a type byte (0x08 = unsigned byte), the
    number of dimensions, one big-endian int32 per dimension, then the data.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise GenforgeError(f"{path} is corrupt or truncated ({e}); delete it and download it again") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise GenforgeError(f"{path} is not an unsigned-byte IDX file (bad header); "
                            "delete it and download it again")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise GenforgeError(f"{path} is truncated inside its header; delete it and download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(raw) != expected:
        raise GenforgeError(f"{path} is truncated or corrupt: header says {dims} "
                            f"({expected} bytes) but the file holds {len(raw)}; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_pair(folder: str, images_name: str, labels_name: str, url: str,
              checksums: dict[str, str], system_dirs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    def get(name: str) -> np.ndarray:
        return read_idx(locate(f"{folder}/{name}", url + name, checksums[name], system_dirs))

    images, labels = get(images_name), get(labels_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise GenforgeError(f"{folder}/{images_name} holds {images.shape} and {labels_name} "
                            f"{labels.shape}: expected (N, H, W) images and N labels")
    return images[:, None], labels.astype(np.int64)  # (N, 1, H, W)


def _idx_dataset(folder: str, url: str, checksums: dict[str, str], classes: list[str],
                 system_dirs: tuple[str, ...] = ()) -> RawImages:
    x, y = _idx_pair(folder, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", url,
                     checksums, system_dirs)
    xt, yt = _idx_pair(folder, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", url,
                       checksums, system_dirs)
    return RawImages(x, y, xt, yt, classes)


def _fashion_mnist() -> RawImages:
    # Debian's dataset-fashion-mnist package installs the same four files here.
    return _idx_dataset("fashion-mnist", FASHION_URL, FASHION_FILES, FASHION_CLASSES,
                        ("/usr/share/datasets/fashion-mnist",))


def _mnist() -> RawImages:
    return _idx_dataset("mnist", MNIST_URL, MNIST_FILES, [str(i) for i in range(10)])


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays only: a tampered archive cannot run code."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data archive")
        return super().find_class(module, name)


def _cifar10() -> RawImages:
    path = locate("cifar10/cifar-10-python.tar.gz", CIFAR10_URL, CIFAR10_SHA256)
    return read_cifar10(path)


def read_cifar10(path: Path) -> RawImages:
    """The CIFAR-10 python archive: pickled dicts with b'data' (N, 3072) uint8 and b'labels'."""

    def load(tar: tarfile.TarFile, member: str) -> dict:
        try:
            f = tar.extractfile(f"cifar-10-batches-py/{member}")
            return _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        except KeyError:
            raise GenforgeError(f"{path} has no cifar-10-batches-py/{member}; "
                                "it is not the CIFAR-10 python archive") from None
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise GenforgeError(f"{path}: {member} is corrupt ({e}); download it again") from None

    try:
        with tarfile.open(path, "r:gz") as tar:
            train = [load(tar, f"data_batch_{i}") for i in range(1, 6)]
            test = load(tar, "test_batch")
            meta = load(tar, "batches.meta")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise GenforgeError(f"{path} is corrupt or truncated ({e}); delete it and download it again") from None

    def arrays(batches: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        y = np.concatenate([np.asarray(b[b"labels"], dtype=np.int64) for b in batches])
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise GenforgeError(f"{path} holds data of shape {x.shape}: expected (N, 3072) rows")
        return x.reshape(-1, 3, 32, 32), y  # rows are R(1024) G(1024) B(1024), row-major

    x, y = arrays(train)
    xt, yt = arrays([test])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return RawImages(x, y, xt, yt, names)


def _jsb_roll() -> RawImages:
    from genforge.data.music_roll import jsb_roll  # music glue, imported only when asked for

    return RawImages(*jsb_roll())


def _digits() -> RawImages:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GenforgeError("the 'digits' dataset needs scikit-learn: pip install 'genforge[images]'") from None
    d = load_digits()
    # Pixels are counts 0..16 of an 4x4-downsampled 32x32 bitmap; map them onto 0..255.
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    return RawImages(x, d.target.astype(np.int64), class_names=[str(i) for i in range(10)])


def _open_image(path: Path) -> tuple[np.ndarray, set[str]]:
    """An image file as uint8 (H, W) or (H, W, 3), and notes on what was converted:
    ``"16bit"`` (scaled to 8 bits) and ``"alpha"`` (composited on white)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return _to_uint8(im, path)
    except (UnidentifiedImageError, OSError) as e:
        raise GenforgeError(f"cannot read image {path} ({e}); remove or replace it") from None


def _to_uint8(im, path: Path) -> tuple[np.ndarray, set[str]]:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit PNGs open as I;16 or I: scale 0..65535 onto 0..255 (x / 257), never clip.
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise GenforgeError(f"image {path} holds values {a.min()}..{a.max()}, outside 16 bits; "
                                "save it as an 8- or 16-bit PNG")
        return np.rint(a / 257.0).astype(np.uint8), {"16bit"}
    if im.mode == "F":
        raise GenforgeError(f"image {path} holds 32-bit floats; save it as an 8-bit PNG or JPEG")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    gray = im.mode in ("1", "L", "LA", "La")
    if not has_alpha:
        return np.asarray(im.convert("L" if gray else "RGB")), set()
    a = np.asarray(im.convert("LA" if gray else "RGBA")).astype(np.float64)
    alpha = a[..., -1:] / 255.0
    if alpha.min() >= 1.0:  # an alpha channel that is opaque everywhere drops nothing
        return a[..., :-1].squeeze(-1).astype(np.uint8) if gray else a[..., :-1].astype(np.uint8), set()
    rgb = np.rint(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)  # over white
    return (rgb[..., 0] if gray else rgb), {"alpha"}


def _warn_conversions(root: Path, files: list[Path], notes: list[set[str]]) -> None:
    said = {"16bit": "are 16-bit; scaled to 8 bits (value / 257)",
            "alpha": "have transparent pixels; alpha is dropped after compositing them on white"}
    for key, what in said.items():
        hits = [f for f, n in zip(files, notes, strict=True) if key in n]
        if hits:
            warnings.warn(f"{len(hits)} images in {root} {what} (first: {hits[0].name})", stacklevel=3)


def load_image_folder(root: Path) -> RawImages:
    """Every PNG/JPEG under ``root``; labels from first-level subfolder names when all images have one."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GenforgeError(f"folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            "point data.name at a folder of PNG or JPEG files")
    opened = [_open_image(p) for p in files]
    arrays = [a for a, _ in opened]
    _warn_conversions(root, files, [n for _, n in opened])
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        (h0, w0), k = arrays[0].shape[:2], next(i for i, a in enumerate(arrays) if a.shape[:2] != arrays[0].shape[:2])
        h1, w1 = arrays[k].shape[:2]
        raise GenforgeError(f"images in {root} have mixed sizes ({files[0].name} is {w0}x{h0}, "
                            f"{files[k].name} is {w1}x{h1}); resize them to one size first")
    colour = any(a.ndim == 3 for a in arrays)
    # (H, W) grayscale or (H, W, 3) -> (C, H, W); one grayscale file among colour ones is broadcast.
    x = np.stack([np.repeat(a[None], 3, 0) if colour and a.ndim == 2 else
                  (a.transpose(2, 0, 1) if a.ndim == 3 else a[None]) for a in arrays]).astype(np.uint8)
    parents = [p.relative_to(root).parts for p in files]
    labels, names = None, []
    if all(len(parts) >= 2 for parts in parents):
        names = sorted({parts[0] for parts in parents})
        labels = np.array([names.index(parts[0]) for parts in parents], dtype=np.int64)
    return RawImages(x, labels, class_names=names)


def _load_npz(path: Path) -> RawImages:
    """An ``.npz`` with ``images`` (or ``x`` / ``x_train``) shaped (N,H,W), (N,H,W,C) or (N,C,H,W),
    uint8 0..255 or floats in [0, 1]; optional ``labels`` (``y`` / ``y_train``), ``test_images``
    (``x_test``), ``test_labels`` (``y_test``) and ``class_names``."""
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except (OSError, ValueError) as e:
        raise GenforgeError(f"{path} is not a readable .npz file ({e})") from None

    def pick(*names):
        for n in names:
            if n in keys:
                try:
                    return z[n]
                except ValueError:  # an object (pickled) array: refused, it could run code
                    raise GenforgeError(f"{path}: '{n}' is an object array (e.g. a list of arrays of "
                                        "different shapes); save one numeric array, e.g. "
                                        "np.stack(images).astype(np.uint8)") from None
        return None

    x = pick("images", "x", "x_train")
    if x is None:
        raise GenforgeError(f"{path} has no 'images' (or 'x', 'x_train') array; it holds: {', '.join(sorted(keys))}")
    y = pick("labels", "y", "y_train")
    xt, yt = pick("test_images", "x_test"), pick("test_labels", "y_test")
    names = pick("class_names")

    def to_uint8_nchw(a: np.ndarray, what: str) -> np.ndarray:
        if a.ndim == 3:
            a = a[:, None]
        elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
        if a.ndim != 4 or a.shape[1] not in (1, 3):
            raise GenforgeError(f"{path}: '{what}' has shape {a.shape}; expected (N,H,W), (N,H,W,C) or "
                                "(N,C,H,W) with 1 or 3 channels")
        return _npz_pixels(a, f"{path}: '{what}'")

    def labels_of(lab, imgs, what):
        if lab is None:
            return None
        lab = np.asarray(lab).astype(np.int64).reshape(-1)
        if len(lab) != len(imgs):
            raise GenforgeError(f"{path}: {len(lab)} {what} for {len(imgs)} images")
        return lab

    x = to_uint8_nchw(x, "images")
    raw = RawImages(x, labels_of(y, x, "labels"))
    if xt is not None:
        raw.test = to_uint8_nchw(xt, "test_images")
        raw.test_labels = labels_of(yt, raw.test, "test_labels")
        if raw.test.shape[1:] != x.shape[1:]:
            raise GenforgeError(f"{path}: test images are {raw.test.shape[1:]} but training images "
                                f"{x.shape[1:]}; both splits must share one shape")
    tops = [lab.max(initial=-1) for lab in (raw.train_labels, raw.test_labels) if lab is not None]
    n_cls = int(max(tops, default=-1)) + 1
    raw.class_names = [str(n) for n in names] if names is not None else [str(i) for i in range(n_cls)]
    return raw


def _npz_pixels(a: np.ndarray, where: str) -> np.ndarray:
    """uint8 as is; other integers must lie in 0..255 and floats in [0, 1] (no NaN): never clip."""
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise GenforgeError(f"{where} holds integers {a.min()}..{a.max()}, outside 0..255; "
                                "rescale them to 0..255 (or floats in [0, 1]) first")
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.floating):
        raise GenforgeError(f"{where} has dtype {a.dtype}; store uint8 0..255 or floats in [0, 1]")
    if a.size and not np.isfinite(a).all():
        raise GenforgeError(f"{where} holds {int((~np.isfinite(a)).sum())} NaN or infinite values; "
                            "fix or drop those images")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise GenforgeError(f"{where} holds floats {a.min():g}..{a.max():g}, outside [0, 1]; "
                            "store uint8 0..255 or floats in [0, 1]")
    return np.rint(a * 255.0).astype(np.uint8)


IMAGE_DATASETS: dict[str, tuple[str, Callable[[], RawImages]]] = {
    "digits": ("8x8 handwritten digits from scikit-learn, 1,797 images, 10 classes, always offline", _digits),
    "fashion-mnist": (("Fashion-MNIST, 28x28 grayscale, 60k train + 10k test, 10 classes "
                       "($GENFORGE_DATA, /usr/share/datasets or download)"), _fashion_mnist),
    "mnist": ("MNIST handwritten digits, 28x28, 60k + 10k, 10 classes ($GENFORGE_DATA or download)", _mnist),
    "cifar10": ("CIFAR-10, 32x32 colour, 50k + 10k, 10 classes ($GENFORGE_DATA or download)", _cifar10),
    "jsb-roll": ("JSB Chorales as 2-bar piano rolls, 1 x 48 pitches x 32 16ths, labelled major/minor "
                 "(data/music_roll.py; $GENFORGE_DATA/jsb-chorales or download)", _jsb_roll),
}


def load_raw(name: str) -> RawImages:
    """Registry name, a folder of images or an ``.npz`` file -> :class:`RawImages`."""
    if name in IMAGE_DATASETS:
        return IMAGE_DATASETS[name][1]()
    path = Path(name).expanduser()
    if path.is_dir():
        return load_image_folder(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise GenforgeError(f"'{name}' is a single image; point data.name at the folder that holds the images")
    raise GenforgeError(f"unknown image dataset '{name}': not one of {', '.join(IMAGE_DATASETS)}, "
                        "a folder of PNG/JPEG images or an .npz file")
