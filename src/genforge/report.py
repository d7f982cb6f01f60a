"""The printout of `genforge eval` and `genforge metrics images`: numbers grouped under headings.

:func:`format_report` takes the flat dict an evaluation returns (``eval.json``) and prints it
as quality, diversity, memorization, likelihood, music, floors and other, in that order, each key
in the order the evaluation produced it. Integers print as integers (``iwae_k: 100``),
floats with 4 decimals (a tiny nonzero float, such as a KID standard error, in 4 significant
digits so that it does not read as 0.0000).
"""

from __future__ import annotations

import functools
import math
from typing import Any

GROUPS = ("quality", "diversity", "memorization", "likelihood", "music", "floors", "other")

_QUALITY = {"fd", "kid", "kid_se", "precision", "recall", "density", "coverage", "label_agreement",
            "inception_fid", "fid", "valid", "Filters", "logP", "SA", "QED", "weight"}
_DIVERSITY = {"class_entropy", "class_entropy_norm", "test_class_entropy_norm"}
_LIKELIHOOD = {"loss", "val_loss", "perplexity", "bits_per_char", "bits_per_dim", "bits_per_token",
               "iwae_k", "active_units", "latent_dim", "nll_images", "tokens", "kl", "recon",
               "heldout_loss"}
# Keys that count something: a float holding a whole number prints as an int.
COUNT_KEYS = {"step", "samples", "nll_images", "iwae_k", "active_units", "latent_dim",
              "extractor_version", "tokens", "test_images",
              # 16th steps copied from a training chorale: a median of counts (14, or 2.5)
              "memorization_copy_steps_median", "floor_memorization_copy_steps_median"}


def group_of(key: str) -> str:
    """Which heading ``key`` goes under."""
    if key.startswith("floor_"):
        return "floors"
    if key.startswith("memorization") or key == "Novelty":
        return "memorization"
    if key in _DIVERSITY or key.startswith(("class_frac/", "class_hist", "unique@", "IntDiv")) or "entropy" in key:
        return "diversity"
    if key in _QUALITY or key.startswith(("fd_", "kid_", "inception_", "FCD/", "SNN/", "Frag/", "Scaf/")):
        return "quality"
    if key in _LIKELIHOOD or key.startswith(("nll", "elbo", "bits", "perplexity", "val_loss", "heldout_")):
        return "likelihood"
    if key in _music_keys():  # a music run's sampled pieces; real Bach's same rows are under floors
        return "music"
    return "other"


@functools.cache
def _music_keys() -> frozenset[str]:
    from genforge.metrics.music.table import ROWS

    return frozenset(k for k, _ in ROWS)


def format_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if key in COUNT_KEYS and value.is_integer():
            return str(int(value))
        if math.isfinite(value) and value != 0 and abs(value) < 5e-5:
            return f"{value:.4g}"
        return f"{value:.4f}"
    return str(value)


def group_report(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{heading: {key: value}} for the non-empty headings, in :data:`GROUPS` order."""
    groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    for key, value in result.items():
        groups[group_of(key)][key] = value
    return {g: items for g, items in groups.items() if items}


def format_report(result: dict[str, Any]) -> str:
    """The result of an evaluation as text, grouped under headings, one ``key: value`` a line."""
    grouped = group_report(result)
    width = max((len(k) for items in grouped.values() for k in items), default=0) + 1
    lines: list[str] = []
    for heading, items in grouped.items():
        lines.append(f"{heading}:")
        lines.extend(f"  {key + ':':<{width}} {format_value(key, value)}" for key, value in items.items())
    return "\n".join(lines)
