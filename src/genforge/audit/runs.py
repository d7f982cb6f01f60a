"""`genforge audit RUN_DIR`: draw samples from a run and measure memorization (every modality)
and class bias (runs with classes) in one report, written atomically to RUN_DIR/audit.json
(which the model card reads) with, for images, the closest sample/training pairs side by side
in RUN_DIR/audit-pairs.png.

Samples are drawn as `genforge sample` draws them by default (text at temperature 0.8 from a
newline, molecules at temperature 1, images with labels cycling through the classes), without
the text watermark: the audit measures the model, not a mark. This is audit's one table per
modality (``AUDITS``), as ``rl/specs.py`` is RL's.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError, __version__
from genforge.audit.bias import class_balance, per_class_quality
from genforge.audit.memorization import image_memorization, molecule_memorization, text_memorization
from genforge.audit.privacy import music_index, training_data, training_molecules, training_text

AUDIT_FILE = "audit.json"
PAIRS_FILE = "audit-pairs.png"
DEFAULT_SAMPLES = {"image": 1000, "text": 16, "molecule": 1000, "music": 32}
TEXT_TOKENS = 500  # new tokens per text sample (the `genforge sample` default)
TRAIN_LABEL_SUBSET = 5000  # training images the classifier labels for the expected class shares


# --------------------------------------------------------------------------- images


@torch.no_grad()
def _draw_images(run, n: int, generator, batch_size: int = 250):
    """(n, C, H, W) samples in [0, 1] and the classes asked for (conditional runs) or None."""
    from genforge.data.images import to_unit

    k = run.model.conditioning_classes
    requested = torch.arange(n) % k if k else None
    device = next(run.model.parameters()).device
    out = []
    for s in range(0, n, batch_size):
        m = min(batch_size, n - s)
        y = requested[s:s + m].to(device) if k else None
        out.append(run.model.sample(m, generator, labels=y).float().cpu())
    return to_unit(torch.cat(out), run.spec.pixel_range), requested


def _image_bias(run, data, fake: torch.Tensor, requested, seed: int) -> dict | None:
    """Class balance of unconditional samples (or per-class quality of conditional ones), as
    the dataset's fixed classifier (the extractor every image metric uses) labels them."""
    from genforge.metrics.extractor import load_extractor

    spec = data.spec
    if not spec.num_classes:
        return None
    try:
        extractor = load_extractor(data)
    except GenforgeError as e:
        return {"skipped": f"no classifier for '{spec.name}' ({e})"}
    f_fake, p_fake = extractor.run(fake)
    names = list(spec.class_names)
    if requested is not None:
        test = data.test.images.float() / 255.0
        f_test, _ = extractor.run(test)
        out = per_class_quality(f_fake, p_fake, requested, f_test, data.test.labels, names)
        return {"kind": "conditional: per-class quality (FD against test images of the class)", **out}
    # expected shares: the same classifier on a seeded subset of the training images, so its
    # errors enter both sides of the comparison alike
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data.train), generator=g)[:TRAIN_LABEL_SUBSET]
    _, p_train = extractor.run(data.train.images[pick].float() / 255.0)
    k = len(names)
    expected = torch.bincount(p_train.argmax(1), minlength=k).double()
    source = f"the classifier's labels of {len(pick)} training images"
    if (expected == 0).any() and data.train.labels is not None:  # a class it never predicts: true labels
        expected = torch.bincount(data.train.labels, minlength=k).double()
        source = "the training labels"
    observed = torch.bincount(p_fake.argmax(1), minlength=k)
    out = class_balance(observed.tolist(), (expected / expected.sum()).tolist(), names)
    return {"kind": "unconditional: class balance", "expected_from": source, **out}


def audit_images(run, n: int, generator, seed: int) -> tuple[dict, dict]:
    data = training_data(run)
    fake, requested = _draw_images(run, n, generator)
    memo = image_memorization(fake, data.train.images, heldout=data.test.images[:n])
    bias = _image_bias(run, data, fake, requested, seed)
    return {"memorization": memo, "bias": bias}, {"fake": fake, "train": data.train.images, "spec": data.spec}


def save_pairs(path: Path, memo: dict, fake: torch.Tensor, train: torch.Tensor, spec) -> Path:
    """The closest sample/training pairs, side by side: the sample (captioned with its RMS pixel
    distance) left, its nearest training image (captioned with its index) right."""
    from genforge.data.grids import save_grid
    from genforge.data.images import to_range

    worst = memo["worst"]
    samples = to_range((fake[[w[0] for w in worst]] * 255).round().to(torch.uint8), spec.pixel_range)
    near = to_range(train[[w[1] for w in worst]], spec.pixel_range)
    pairs = torch.stack([samples, near], 1).flatten(0, 1)  # (2N, C, H, W), interleaved
    # captions fit a 32-px cell (~5 characters): the sample's distance, the training image's index
    captions = [c for w in worst for c in (f"{w[2]:.3f}", str(w[1]))]
    return save_grid(pairs, path, spec, captions, nrow=2 * min(4, len(worst)))


# --------------------------------------------------------------------------- text


def audit_text(run, n: int, generator, seed: int) -> tuple[dict, dict]:
    from genforge.audit.textindex import SuffixIndex
    from genforge.sampling.text import generate_text

    data = training_data(run)
    index = SuffixIndex(training_text(data))
    samples = generate_text(run.model, run.tokenizer, ["\n"] * n, max_new_tokens=TEXT_TOKENS,
                            temperature=0.8, generator=generator)
    # held-out passages as long as the samples, evenly spaced over the validation text
    val = data.tokenizer.decode(np.asarray(data.val.tokens).tolist())
    length = max(1, int(np.mean([len(s) for s in samples])))
    starts = np.linspace(0, max(0, len(val) - length), num=n).astype(int)
    heldout = [val[s: s + length] for s in starts] if len(val) >= length else []
    return {"memorization": text_memorization(samples, index, heldout=heldout), "bias": None}, {}


# --------------------------------------------------------------------------- molecules


def audit_molecules(run, n: int, generator, seed: int) -> tuple[dict, dict]:
    from genforge.metrics.molecules import require_rdkit
    from genforge.modalities.molecule import draw

    require_rdkit()
    data = training_data(run)
    train = training_molecules(data)
    ids = draw(run.model, n, generator, 500, 1.0, progress=False)
    smiles = [run.tokenizer.decode(row) for row in ids]
    return {"memorization": molecule_memorization(smiles, train), "bias": None}, {}


# --------------------------------------------------------------------------- music


@torch.no_grad()
def audit_music(run, n: int, generator, seed: int) -> tuple[dict, dict]:
    """Pieces drawn as `genforge sample` draws them (temperature 1 from <bos>, what fits the
    context), against the training pieces; held-out pieces (test, else validation) cut to the
    samples' length give the floor."""
    from genforge.audit.music import music_memorization

    data = training_data(run)
    tok = run.tokenizer
    ids = []
    for s in range(0, n, 64):
        m = min(64, n - s)
        ids += run.model.sample(m, generator, prompts=[[tok.bos_id]] * m, temperature=1.0)
    grids = [tok.to_grid(row) for row in ids]
    heldout = data.pieces.get("test") or data.pieces.get("val") or []
    return {"memorization": music_memorization(grids, music_index(run, data), heldout=heldout), "bias": None}, {}


AUDITS = {"image": audit_images, "text": audit_text, "molecule": audit_molecules, "music": audit_music}


# --------------------------------------------------------------------------- the run


def audit_run(run, num_samples: int | None = None, seed: int = 0) -> tuple[dict, dict]:
    """The audit of a loaded run: (the report, extras for the pairs PNG). Samples come from a
    generator seeded with ``seed`` on the model's device, so an audit repeats exactly."""
    modality = run.spec.modality
    if modality not in AUDITS:
        raise GenforgeError(f"`genforge audit` has no memorization audit for {modality} runs yet; it "
                            f"covers {', '.join(AUDITS)}")
    if num_samples is not None and num_samples < 1:
        raise GenforgeError(f"--num-samples must be at least 1, got {num_samples}")
    n = num_samples or DEFAULT_SAMPLES[modality]
    device = next(run.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    body, extras = AUDITS[modality](run, n, generator, seed)
    report = {"schema": 1, "genforge_version": __version__,
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "run": run.run_dir.name, "family": run.config.family, "modality": modality,
              "checkpoint": run.checkpoint.name, "step": int(run.step), "seed": seed, "num_samples": n, **body}
    return report, extras


def save_audit(run_dir: Path, report: dict, extras: dict, out: str | None = None) -> list[Path]:
    """Write RUN_DIR/audit.json (and, for images, RUN_DIR/audit-pairs.png) atomically; ``out``:
    also this JSON file (a new file: never replaces one)."""
    from genforge.atomic import atomic_write_text
    from genforge.outputs import check_out

    if out is not None:
        check_out(out)
    written = []
    if extras.get("fake") is not None and report["memorization"]["worst"]:
        path = save_pairs(run_dir / PAIRS_FILE, report["memorization"], **extras)
        report["pairs_png"] = PAIRS_FILE
        written.append(path)
    text = json.dumps(finite_json(report), indent=2) + "\n"
    atomic_write_text(run_dir / AUDIT_FILE, text)
    written.insert(0, run_dir / AUDIT_FILE)
    if out is not None:
        atomic_write_text(Path(out), text)
        written.append(Path(out))
    return written


def finite_json(value):
    """NaN/inf as null: audit.json is strict JSON (the card and the web page parse it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
