"""A fixed, versioned feature extractor per dataset: a small CNN classifier trained by genforge.

Why not Inception: the standard FID network (Heusel et al. 2017) needs weights that
are downloaded, and it sees 28x28 grayscale digits and clothes as upsampled noise
far from its ImageNet training data. A small classifier trained on the dataset
itself, with a fixed seed, gives features that separate exactly the things that
matter in that domain, and it is cheap enough to ship. Its weights live in
``genforge/weights/`` with a manifest (``extractors.json``) recording version,
sha256 and held-out test accuracy; the loader refuses a file whose hash differs,
so every FD/KID/precision number names the one network that produced it.

Input: images in [0, 1], shape (B, C, H, W). Features: the 128-d global average
pool of the last conv block (the analogue of Inception's pool3 features).

Extractors are found by dataset *identity*, not by name: the key is the fingerprint
(sha256 prefix, :func:`genforge.data.images.fingerprint_of`) of the dataset's TEST images,
the split an extractor is validated on and every metric compares against. So an
``.npz`` copy of Fashion-MNIST under any path finds the shipped Fashion-MNIST
extractor, and a different dataset that happens to be called ``digits`` finds none.
For datasets without a shipped test split (digits, folders, an ``.npz`` without
``test_images``) the test images are a seeded held-out fraction, so they, and the
key, depend on ``data.val_fraction`` (the shipped digits extractor: 0.1, the default).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genforge import GenforgeError
from genforge.data.locate import cache_dir, sha256_file

EXTRACTOR_VERSION = 1
FEATURE_DIM = 128
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST = "extractors.json"
# Per-dataset training recipe; the fixed seed makes `fit-extractor` reproduce the shipped file.
RECIPES = {"digits": {"epochs": 30, "batch_size": 64, "lr": 3e-3},
           "fashion-mnist": {"epochs": 10, "batch_size": 128, "lr": 3e-3}}
DEFAULT_RECIPE = {"epochs": 5, "batch_size": 128, "lr": 3e-3}
SEED = 0


class DomainClassifier(nn.Module):
    """conv(32) -> pool -> conv(64) -> pool -> conv(128) -> global average pool -> linear.

    (B, C, H, W) -> features (B, 128) -> logits (B, num_classes). Input is shifted to
    [-1, 1] inside, so callers always pass [0, 1] images.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        # Pool early: at 28x28 the full-resolution convolutions dominate the cost on a CPU.
        self.body = nn.Sequential(block(in_channels, 32), nn.MaxPool2d(2),
                                  block(32, 64), nn.MaxPool2d(2),
                                  block(64, FEATURE_DIM))
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x * 2.0 - 1.0)  # (B, 128, H/4, W/4)
        return h.mean((2, 3))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


class Extractor:
    """A loaded extractor: ``features(x)`` and ``probs(x)`` on [0, 1] images, batched, no grad."""

    def __init__(self, net: DomainClassifier, meta: dict, path: Path):
        self.net, self.meta, self.path = net.eval(), meta, path

    @torch.no_grad()
    def run(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) in [0, 1] -> features (N, 128), class probabilities (N, K)."""
        feats, probs = [], []
        for s in range(0, images.shape[0], batch_size):
            f = self.net.features(images[s:s + batch_size].float())
            feats.append(f)
            probs.append(torch.softmax(self.net.head(f), -1))
        return torch.cat(feats).double(), torch.cat(probs).double()


def file_name(dataset: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)
    return f"{safe}-extractor-v{EXTRACTOR_VERSION}.safetensors"


def user_dir() -> Path:
    return cache_dir() / "extractors"


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _entry_fingerprint(folder: Path, name: str, entry: dict) -> str | None:
    """The test-image fingerprint an extractor was fitted against: the manifest's, else the one
    in the weight file's header (the shipped manifest predates the field; the header has it)."""
    if entry.get("test_fingerprint"):
        return entry["test_fingerprint"]
    from safetensors import safe_open

    try:
        with safe_open(str(folder / name), "pt") as f:
            return (f.metadata() or {}).get("test_fingerprint")
    except Exception:  # an unreadable file matches nothing; a matched one is hash-checked below
        return None


def find_extractor(fingerprint: str) -> tuple[Path, dict] | None:
    """(weights path, manifest entry) of the extractor fitted on a dataset whose test images have
    this fingerprint: the shipped ones first, then the user's cache (manifest order by file name)."""
    for folder in (SHIPPED_DIR, user_dir()):
        for name, entry in sorted(_manifest(folder).items()):
            if not (folder / name).is_file():
                continue
            if _entry_fingerprint(folder, name, entry) == fingerprint:
                return folder / name, entry
    return None


def _dataset(dataset):
    """An :class:`ImageData` as is; a name / path loaded with the default split."""
    if not isinstance(dataset, str):
        return dataset
    from genforge.config import DataConfig
    from genforge.data.images import load_images

    return load_images(DataConfig(name=dataset, pixel_range=(0.0, 1.0)))


def load_extractor(dataset) -> Extractor:
    """The extractor for ``dataset`` (an :class:`~genforge.data.images.ImageData`, or a dataset
    name / folder / .npz, loaded here with the default split), found by the content hash of its
    test images: shipped ones first, else one the user fitted into the cache. The weight file's
    sha256 must match its manifest entry."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    data = _dataset(dataset)
    name = data.spec.name
    found = find_extractor(data.fingerprint)
    if found is None:
        raise GenforgeError(f"no feature extractor was fitted on the test images of '{name}' "
                            f"(fingerprint {data.fingerprint}; genforge ships digits and fashion-mnist, "
                            f"with the default data.val_fraction); fit one with "
                            f"`genforge metrics fit-extractor {name}` (add --val-fraction F for a run "
                            f"with data.val_fraction=F)")
    path, entry = found
    got = sha256_file(path)
    if got != entry["sha256"]:
        raise GenforgeError(f"feature extractor {path} has sha256 {got[:12]}..., the manifest says "
                            f"{entry['sha256'][:12]}...; numbers would not compare: reinstall genforge "
                            f"or rerun `genforge metrics fit-extractor {name}`")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    with torch.random.fork_rng(devices=[]):  # building the net draws initial weights: keep the
        # caller's random stream untouched (a GAN loads this mid-training; resume must be exact)
        net = DomainClassifier(int(meta["in_channels"]), int(meta["num_classes"]))
    net.load_state_dict(load_file(str(path)))
    meta.update(entry)
    meta["test_fingerprint"] = data.fingerprint
    return Extractor(net, meta, path)


def _fit_split(data, val_fraction: float):
    """Every image that is not a test image (train and validation), in the source's order: the
    training set of the extractor, as before the data layer carved validation out of train, so
    `fit-extractor` with the fixed seed still reproduces the shipped weights. Falls back to train
    followed by val if the split cannot be rebuilt."""
    from genforge.data.images import ImageSplit, split_indices

    tr, va = data.train, data.val
    n = len(tr) + len(va)
    keep, held = split_indices(n, val_fraction, data.split_seed + 1)
    images = torch.empty((n, *tr.images.shape[1:]), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    if len(keep) == len(tr):
        images[keep], images[held] = tr.images, va.images
        labels[keep], labels[held] = tr.labels, va.labels
    else:
        images, labels = torch.cat([tr.images, va.images]), torch.cat([tr.labels, va.labels])
    return ImageSplit(images, labels, (0.0, 1.0), False)


def fit_extractor(dataset: str, out_dir: str | Path | None = None, epochs: int | None = None,
                  seed: int = SEED, progress: bool = True, max_train: int | None = None,
                  val_fraction: float | None = None) -> dict:
    """Train the domain classifier on every image of ``dataset`` outside its test split, with a
    fixed seed; measure its accuracy on the test split; write weights and manifest entry (keyed
    by the test images' fingerprint, see :func:`load_extractor`) into ``out_dir`` (default: the
    user cache). ``val_fraction`` (default: data.val_fraction's default) decides the test split
    of datasets without a shipped one. Returns the entry."""
    from safetensors.torch import save_file

    from genforge.config import DataConfig
    from genforge.data.images import load_images

    cfg = DataConfig(name=dataset, pixel_range=(0.0, 1.0))
    if val_fraction is not None:
        from genforge.config import validate

        cfg = validate(DataConfig, {"name": dataset, "pixel_range": (0.0, 1.0), "val_fraction": val_fraction},
                       "data")
    data = load_images(cfg)
    if data.spec.num_classes < 2:
        raise GenforgeError(f"dataset '{dataset}' has no class labels; the feature extractor is a "
                            "classifier, so it needs labelled images (subfolders per class)")
    train, test = _fit_split(data, cfg.val_fraction), data.test
    recipe = dict(RECIPES.get(dataset, DEFAULT_RECIPE))
    if epochs is not None:
        recipe["epochs"] = epochs
    torch.manual_seed(seed)
    net = DomainClassifier(data.spec.shape[0], data.spec.num_classes)
    n = len(train) if max_train is None else min(max_train, len(train))
    steps_per_epoch = max(1, n // recipe["batch_size"])
    total = steps_per_epoch * recipe["epochs"]
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe["lr"], total_steps=total)
    g = torch.Generator().manual_seed(seed)
    t0, step = time.perf_counter(), 0
    net.train()
    for epoch in range(recipe["epochs"]):
        order = torch.randperm(len(train), generator=g)[:n]
        for s in range(steps_per_epoch):
            batch = train.get(order[s * recipe["batch_size"]:(s + 1) * recipe["batch_size"]])
            loss = F.cross_entropy(net(batch["x"]), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if progress:
            print(f"epoch {epoch + 1}/{recipe['epochs']}: loss {loss.item():.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(test), 1000):
            b = test.get(torch.arange(s, min(s + 1000, len(test))))
            correct += int((net(b["x"]).argmax(-1) == b["y"]).sum())
    acc = correct / len(test)
    out = Path(out_dir) if out_dir is not None else user_dir()
    out.mkdir(parents=True, exist_ok=True)
    name = file_name(dataset)
    if cfg.val_fraction != DataConfig.model_fields["val_fraction"].default:
        # another split, another test set: its own file, so the default one is not replaced
        name = name.replace("-extractor-", f"-{data.fingerprint[:8]}-extractor-")
    meta = {"dataset": dataset, "version": str(EXTRACTOR_VERSION), "seed": str(seed),
            "in_channels": str(data.spec.shape[0]), "num_classes": str(data.spec.num_classes),
            "input_shape": json.dumps(list(data.spec.shape)), "feature_dim": str(FEATURE_DIM),
            "epochs": str(recipe["epochs"]), "test_accuracy": f"{acc:.4f}",
            "test_images": str(len(test)), "test_fingerprint": data.fingerprint}
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / name), metadata=meta)
    entry = {"version": EXTRACTOR_VERSION, "dataset": dataset, "sha256": sha256_file(out / name),
             "test_accuracy": round(acc, 4), "test_images": len(test), "seed": seed,
             "test_fingerprint": data.fingerprint,
             "epochs": recipe["epochs"], "train_images": n, "train_seconds": round(time.perf_counter() - t0, 1),
             "class_names": data.spec.class_names, "input_shape": list(data.spec.shape)}
    manifest = _manifest(out)
    manifest[name] = entry
    from genforge.checkpoint import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"path": str(out / name), **entry}

