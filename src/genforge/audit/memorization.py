"""Memorization measures: how close generated samples sit to the training data. Pure functions
of samples and training data (no run, no sampling); ``audit.runs`` draws the samples.

- images: Euclidean distance to the nearest training image in PIXEL space, reported as an RMS
  per-pixel difference on [0, 1] pixels (distance / sqrt(C*H*W)), so one threshold means the
  same at every image size: 0.025 is an average difference of ~6 grey levels out of 255.
  Pixels rather than the extractor's features: a near-copy is what a person would call the same
  picture, and pixel distance needs no classifier (every image dataset has pixels). Carlini et
  al. 2023 ("Extracting training data from diffusion models") use the same kind of pixel-space
  L2 test.
- text: the longest verbatim overlap with the training text, and the share of the samples'
  character 8-grams that occur in it, through a suffix array (``textindex``).
- molecules: exact copies of training molecules (RDKit canonical SMILES) and novelty (MOSES).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from genforge import GenforgeError

# Default near-copy thresholds (also the privacy filter's), with why:
# Images: 1,000 held-out test images lie at RMS >= 0.030 (Fashion-MNIST: min 0.030, 1% 0.058)
# and >= 0.059 (digits) from their nearest training image, so 0.025 blocks no unseen real image
# there while a copy, or a copy plus re-encoding noise, lies below it.
IMAGE_NEAR_COPY_RMS = 0.025
# Text: 101 held-out 500-character Tiny Shakespeare passages share at most 29 characters with
# the training text (median 18): common phrases. 50 characters (more than a line of verse)
# is well above what unseen text of that author shares by chance.
TEXT_MIN_OVERLAP = 50
NGRAM = 8  # the n of the "share of generated n-grams found in the training text" (characters)


# --------------------------------------------------------------------------- images


def image_distances(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample (N, C, H, W) in [0, 1]: (index of its nearest training image (N,), RMS
    pixel distance to it (N,)), against ``train`` (M, C, H, W) in [0, 1] (or uint8 0..255)."""
    from genforge.data.grids import nearest_neighbours

    if samples.dim() != 4 or train.dim() != 4 or samples.shape[1:] != train.shape[1:]:
        raise GenforgeError(f"samples {tuple(samples.shape)} and training images {tuple(train.shape)} "
                            "must both be (N, C, H, W) of one size")
    if train.dtype == torch.uint8:
        train = train.float() / 255.0
    dims = math.prod(samples.shape[1:])
    idx, dist = nearest_neighbours(samples.detach().cpu().float().flatten(1), train.flatten(1))
    return idx, dist / math.sqrt(dims)


def image_memorization(samples: torch.Tensor, train: torch.Tensor, threshold: float = IMAGE_NEAR_COPY_RMS,
                       heldout: torch.Tensor | None = None, worst: int = 8) -> dict:
    """Nearest-training-image distances of ``samples`` and the near-copies under ``threshold``.

    ``heldout`` (test images, same scale as ``train``): the same distances for unseen real
    images, the baseline a model that does not copy is compared with. Returns plain numbers and
    ``worst``: the closest pairs as [sample index, training index, distance].
    """
    idx, rms = image_distances(samples, train)
    order = rms.argsort()
    out = {"space": "pixels, RMS difference per pixel on [0, 1]", "threshold": float(threshold),
           "samples": int(len(rms)), "near_copies": int((rms < threshold).sum()),
           "min_distance": float(rms.min()), "median_distance": float(rms.median()),
           "worst": [[int(i), int(idx[i]), float(rms[i])] for i in order[:worst].tolist()]}
    if heldout is not None and len(heldout):
        h = heldout.float() / 255.0 if heldout.dtype == torch.uint8 else heldout
        _, base = image_distances(h, train)
        out["heldout_min_distance"] = float(base.min())
        out["heldout_median_distance"] = float(base.median())
        out["heldout_near_copies"] = int((base < threshold).sum())
        out["heldout_images"] = int(len(base))
    return out


# --------------------------------------------------------------------------- text


def text_overlap(samples: Sequence[str], index, ngram: int = NGRAM,
                 threshold: int = TEXT_MIN_OVERLAP) -> list[dict]:
    """Per sample: the longest verbatim overlap with the indexed training text (``length``, the
    ``overlap`` itself, offsets) and its character ``ngram``s found in the text (``found``,
    ``total``); ``copied`` when the overlap is at least ``threshold`` characters."""
    from genforge.audit.textindex import ngram_share

    rows = []
    for s in samples:
        lengths, offsets = index.matching_statistics(s)
        i = int(lengths.argmax()) if len(s) else 0
        n = int(lengths[i]) if len(s) else 0
        found, total = ngram_share(lengths, ngram)
        rows.append({"length": n, "query_offset": i, "text_offset": int(offsets[i]) if n else -1,
                     "overlap": s[i: i + n], "found": found, "total": total, "copied": n >= threshold})
    return rows


def text_memorization(samples: Sequence[str], index, ngram: int = NGRAM, threshold: int = TEXT_MIN_OVERLAP,
                      heldout: Sequence[str] = ()) -> dict:
    """The report for text: the longest verbatim overlap over all samples (and its text), the
    share of generated character ``ngram``s found in the training text, samples with an
    overlap of at least ``threshold`` characters; the same for ``heldout`` passages (unseen
    text of the same source and length: what chance overlap looks like)."""
    rows = text_overlap(samples, index, ngram, threshold)
    if not rows:
        raise GenforgeError("no text samples to audit")
    top = max(range(len(rows)), key=lambda k: rows[k]["length"])
    total = sum(r["total"] for r in rows)
    out = {"unit": "characters", "ngram": ngram, "threshold": threshold, "samples": len(rows),
           "training_chars": len(index),
           "longest_overlap": rows[top]["length"], "longest_overlap_sample": top,
           "longest_overlap_text": rows[top]["overlap"],
           "ngram_share": (sum(r["found"] for r in rows) / total) if total else math.nan,
           "copies": sum(r["copied"] for r in rows),
           "overlap_lengths": [r["length"] for r in rows]}
    if heldout:
        base = text_overlap(heldout, index, ngram, threshold)
        btotal = sum(r["total"] for r in base)
        out["heldout_passages"] = len(base)
        out["heldout_longest_overlap"] = max(r["length"] for r in base)
        out["heldout_median_overlap"] = float(np.median([r["length"] for r in base]))
        out["heldout_ngram_share"] = (sum(r["found"] for r in base) / btotal) if btotal else math.nan
    return out


# --------------------------------------------------------------------------- molecules


def molecule_memorization(smiles: Sequence[str], train_canonical: set[str]) -> dict:
    """Exact copies of training molecules among ``smiles`` (compared as RDKit canonical SMILES,
    so another spelling of a training molecule is a copy) and MOSES novelty (the share of the
    distinct valid samples not in the training set). ``train_canonical``: canonical SMILES."""
    from genforge.metrics.molecules import canonical_smiles
    from genforge.metrics.molecules.table import novelty

    canonical = [canonical_smiles(s) for s in smiles]
    valid = [c for c in canonical if c is not None]
    copies = [i for i, c in enumerate(canonical) if c is not None and c in train_canonical]
    return {"samples": len(smiles), "valid": len(valid), "copies": len(copies),
            "copy_fraction": len(copies) / len(valid) if valid else math.nan,
            "novelty": novelty(set(valid), train_canonical),
            "copied": sorted({canonical[i] for i in copies})[:20]}
