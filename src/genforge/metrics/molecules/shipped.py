"""Reference statistics shipped in the package, so the first MOSES score on a fresh machine
takes minutes, not the half hour of computing them (an RDKit pass and ChemNet over 2 x 176k
reference molecules, 1.58M training SMILES canonicalized for novelty).

MOSES does the same (its package ships the statistics of its test sets); genforge ships what
it computes itself, in one file per bundle (``weights/moses-reference-v1.npz``) described by a
JSON manifest beside it (``weights/moses-reference-v1.json``) that holds the file's sha256 and
the key of each entry:

- **a reference set** (key: the sha256 of its SMILES list): ChemNet's mean and covariance
  (the covariance as its upper triangle, float64: exact, half the bytes), the BRICS fragment
  and scaffold counts, and, for the sets whose properties the metrics read (MOSES: the test
  set only; ``moses_metrics`` takes the property distances against ``test``), each property
  as its distinct values with their counts (the Wasserstein distance of the expanded values
  is bit for bit the computed one). Not the fingerprints SNN needs: 176k x 128 bytes per set,
  still about 24 bytes a molecule under lzma (4 MB a set), so they are recomputed on first
  use, a fast RDKit pass (parse + Morgan, no BRICS, SA or QED), then cached with the rest.
- **a training set** (key: the sha256 of its SMILES list): the rows whose RDKit canonical
  SMILES differ from the row itself (``""`` where RDKit cannot parse it). MOSES stores its
  training SMILES canonically, so this list is short, and the canonical set novelty needs is
  exactly ``set(train) - changed | {canonical of changed}``: no hashing, no collisions.

Everything is keyed by the RDKit and fcd-torch versions that computed it (canonical SMILES
change between RDKit releases; ChemNet's weights come with fcd-torch). A bundle from other
versions, or one whose checksum fails, is not used: the caller computes the statistics
itself after one line on stderr (:func:`notice`). torch and numpy versions are recorded,
not matched: they move ChemNet's float32 activations by rounding only.

This module reads and writes the bundle format only (no RDKit, no ChemNet); building one is
``reference.build_shipped`` (``benchmarks/bench_moses_reference.py --build-shipped``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from genforge.atomic import atomic_write_bytes, atomic_write_text

FORMAT = 1
BUNDLE = "moses-reference-v1"
KEYED_VERSIONS = ("rdkit", "fcd_torch")  # what must match; torch and numpy are recorded only


def default_dir() -> Path:
    """The package's ``weights/`` folder (``GENFORGE_SHIPPED_DIR`` overrides it, for tests)."""
    env = os.environ.get("GENFORGE_SHIPPED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "weights"


def keyed(versions: dict[str, str]) -> dict[str, str]:
    return {k: versions.get(k) for k in KEYED_VERSIONS}


# --------------------------------------------------------------------------- packing


def _join(strings) -> np.ndarray:
    """Strings as one uint8 array of UTF-8 joined by newlines (SMILES hold no newline)."""
    return np.frombuffer("\n".join(strings).encode(), np.uint8)


def _split(array: np.ndarray, count: int) -> list[str]:
    out = bytes(array).decode().split("\n") if count else []
    if len(out) != count:
        raise ValueError(f"expected {count} strings, found {len(out)}")
    return out


def _sorted_floats(values: np.ndarray) -> np.ndarray:
    """Sorted float64 values, losslessly made compressible: the differences of their 64-bit
    patterns (small: neighbours share their top bits) with each byte plane stored together,
    uint8 (8, N). About 4.7 bytes a value under deflate instead of 6 for full-precision values."""
    deltas = np.diff(np.ascontiguousarray(values, np.float64).view(np.uint64), prepend=np.uint64(0))
    return deltas.view(np.uint8).reshape(-1, 8).T.copy()


def _sorted_floats_back(planes: np.ndarray) -> np.ndarray:
    deltas = np.ascontiguousarray(planes.T).view(np.uint64).ravel()
    return np.cumsum(deltas, dtype=np.uint64).view(np.float64)  # wraps modulo 2^64: exact


def pack_set(prefix: str, stats, properties: bool = True) -> dict[str, np.ndarray]:
    """The arrays of one reference set (a ``ReferenceStats``) under ``prefix/``; its property
    values only with ``properties``."""
    iu = np.triu_indices(len(stats.fcd_mu))
    out = {f"{prefix}/fcd_mu": np.asarray(stats.fcd_mu, np.float64),
           f"{prefix}/fcd_sigma_triu": np.asarray(stats.fcd_sigma, np.float64)[iu]}
    for kind in ("fragments", "scaffolds"):
        counter = getattr(stats, kind)
        keys = sorted(counter)
        out[f"{prefix}/{kind}_keys"] = _join(keys)
        out[f"{prefix}/{kind}_counts"] = np.array([counter[k] for k in keys], np.int64)
    for name, values in (stats.properties.items() if properties else ()):
        uniq, counts = np.unique(np.asarray(values, np.float64), return_counts=True)
        out[f"{prefix}/prop_{name}_values"] = _sorted_floats(uniq)
        out[f"{prefix}/prop_{name}_counts"] = counts.astype(np.int64)
    return out


def unpack_set(z, prefix: str, entry: dict) -> dict:
    """Fields of a ``ReferenceStats`` (all but fingerprints) from the arrays under ``prefix/``.

    Properties come back sorted (each distinct value repeated by its count): the Wasserstein
    distance sorts its inputs, so it sees exactly the computed path's numbers."""
    from collections import Counter

    mu = z[f"{prefix}/fcd_mu"]
    d = len(mu)
    sigma = np.zeros((d, d), np.float64)
    iu = np.triu_indices(d)
    sigma[iu] = z[f"{prefix}/fcd_sigma_triu"]
    sigma.T[iu] = sigma[iu]  # mirror the upper triangle; the diagonal is written twice, unchanged
    out = {"fcd_mu": mu, "fcd_sigma": sigma, "n": int(entry["n"]), "n_invalid": int(entry["n_invalid"])}
    for kind in ("fragments", "scaffolds"):
        counts = z[f"{prefix}/{kind}_counts"]
        keys = _split(z[f"{prefix}/{kind}_keys"], len(counts))
        out[kind] = Counter(dict(zip(keys, counts.tolist(), strict=True)))
    out["properties"] = {name: np.repeat(_sorted_floats_back(z[f"{prefix}/prop_{name}_values"]),
                                         z[f"{prefix}/prop_{name}_counts"]) for name in entry["properties"]}
    return out


# --------------------------------------------------------------------------- the bundle


def write_bundle(folder: str | os.PathLike, sets: dict[str, tuple[str, object]],
                 train: tuple[str, int, dict[str, str | None]] | None, versions: dict[str, str],
                 name: str = BUNDLE, properties_of: tuple[str, ...] | None = None) -> Path:
    """Write ``<name>.npz`` then ``<name>.json`` (its sha256 and keys) atomically.

    ``sets`` maps a label (``test``) to (sha256 of its SMILES, ``ReferenceStats``); ``train``
    is (sha256 of the training SMILES, how many, {row: canonical or None} for the rows whose
    canonical SMILES differ) or None. ``versions``: the library versions that computed them.
    ``properties_of``: the labels whose property values are kept (default: every set)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    manifest = {"format": FORMAT, "versions": versions, "sets": {}, "train": None}
    for label, (sha, stats) in sets.items():
        keep = properties_of is None or label in properties_of
        arrays.update(pack_set(label, stats, keep))
        manifest["sets"][sha] = {"label": label, "n": stats.n, "n_invalid": stats.n_invalid,
                                 "properties": sorted(stats.properties) if keep else []}
    if train is not None:
        sha, count, changed = train
        rows = sorted(changed)
        arrays["train/rows"] = _join(rows)
        arrays["train/canonical"] = _join(changed[r] or "" for r in rows)
        manifest["train"] = {"sha256": sha, "n": count, "changed": len(rows)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    manifest["file"] = f"{name}.npz"
    manifest["file_sha256"] = hashlib.sha256(data).hexdigest()
    manifest["file_bytes"] = len(data)
    atomic_write_bytes(folder / f"{name}.npz", data)
    atomic_write_text(folder / f"{name}.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    _manifests.cache_clear()
    return folder / f"{name}.npz"


@lru_cache(maxsize=8)
def _manifests(folder: str) -> tuple[tuple[Path, dict], ...]:
    out = []
    for path in sorted(Path(folder).glob("moses-reference-*.json")):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("format") == FORMAT:
            out.append((path.with_name(manifest["file"]), manifest))
    return tuple(out)


def _find(sha256: str, kind: str, folder) -> tuple[Path, dict] | None:
    for npz, manifest in _manifests(str(folder or default_dir())):
        if kind == "set" and sha256 in manifest["sets"]:
            return npz, manifest
        if kind == "train" and (manifest.get("train") or {}).get("sha256") == sha256:
            return npz, manifest
    return None


def _open_checked(npz: Path, manifest: dict):
    """The bundle's arrays, or None (with a notice) when its bytes do not match the manifest."""
    try:
        data = npz.read_bytes()
    except OSError as e:
        notice(f"cannot read the shipped statistics {npz.name} ({e.strerror})")
        return None
    if hashlib.sha256(data).hexdigest() != manifest["file_sha256"]:
        notice(f"the shipped statistics {npz.name} fail their checksum (a damaged install)")
        return None
    return np.load(io.BytesIO(data))


def load_set(sha256: str, versions: dict[str, str], folder=None) -> dict | None:
    """The shipped fields of the reference set with this SMILES sha256 (see :func:`unpack_set`)
    when a bundle holds it for these RDKit and fcd-torch ``versions``, else None. A bundle that
    holds it for other versions prints one notice: the caller is about to compute it."""
    found = _find(sha256, "set", folder)
    if found is None:
        return None
    npz, manifest = found
    entry = manifest["sets"][sha256]
    if keyed(manifest["versions"]) != keyed(versions):
        notice(_other_versions(f"reference '{entry['label']}'", manifest["versions"], versions))
        return None
    z = _open_checked(npz, manifest)
    return None if z is None else unpack_set(z, entry["label"], entry)


def load_train_changes(sha256: str, versions: dict[str, str], folder=None) -> dict[str, str | None] | None:
    """{row: canonical SMILES or None} for the training rows RDKit writes differently, when a
    bundle holds this training set (by sha256) for this RDKit version, else None."""
    found = _find(sha256, "train", folder)
    if found is None:
        return None
    npz, manifest = found
    if manifest["versions"].get("rdkit") != versions.get("rdkit"):
        notice(_other_versions("training set", manifest["versions"], versions, "canonicalizing it"))
        return None
    z = _open_checked(npz, manifest)
    if z is None:
        return None
    count = int(manifest["train"]["changed"])
    rows, canonical = _split(z["train/rows"], count), _split(z["train/canonical"], count)
    return {r: (c or None) for r, c in zip(rows, canonical, strict=True)}


def _other_versions(subject: str, shipped: dict, installed: dict, action: str = "computing them") -> str:
    have = ", ".join(f"{k} {installed.get(k)}" for k in KEYED_VERSIONS)
    made = ", ".join(f"{k} {shipped.get(k)}" for k in KEYED_VERSIONS)
    return (f"the shipped statistics of the {subject} were computed with {made}; this install has {have}, "
            f"so genforge is {action} once (minutes), then caches the result")


def notice(message: str) -> None:
    """One line on stderr: the user is about to wait, and why."""
    print(f"genforge: {message}", file=sys.stderr, flush=True)
